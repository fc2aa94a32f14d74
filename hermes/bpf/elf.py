"""A reader for ELF64 relocatable BPF objects, as clang emits them.

Only what a BPF loader needs: section headers and their bytes, the symbol table
and SHT_REL relocations.  Everything is bounds-checked; a malformed file raises
ParseError, never IndexError or struct.error.
"""

import struct

from .errors import ParseError

EM_BPF = 247
ET_REL = 1

SHT_PROGBITS = 1
SHT_SYMTAB = 2
SHT_STRTAB = 3
SHT_NOBITS = 8
SHT_REL = 9

SHF_EXECINSTR = 0x4

STT_NOTYPE, STT_OBJECT, STT_FUNC, STT_SECTION = 0, 1, 2, 3
STB_LOCAL, STB_GLOBAL, STB_WEAK = 0, 1, 2
SHN_UNDEF = 0
SHN_LORESERVE = 0xFF00

# BPF relocation types (llvm/BinaryFormat/ELFRelocs/BPF.def).
R_BPF_64_64 = 1       # ld_imm64: map, global data, subprogram address
R_BPF_64_ABS64 = 2    # data words (.maps initialisers for map-in-map)
R_BPF_64_ABS32 = 3
R_BPF_64_NODYLD32 = 4  # .BTF / .BTF.ext, resolved by nobody
R_BPF_64_32 = 10      # call instruction

# No BPF map value can be this large (array values are capped near KMALLOC_MAX_SIZE,
# 4 MiB on x86-64), so a bigger .bss is corruption, not a reason to allocate.
MAX_NOBITS = 1 << 26

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_SHDR = struct.Struct("<IIQQQQIIQQ")
_SYM = struct.Struct("<IBBHQQ")
_REL = struct.Struct("<QQ")


class Section:
    __slots__ = ("index", "name", "type", "flags", "offset", "size", "link", "info",
                 "entsize", "_file")

    def __init__(self, f, index, name, hdr):
        self._file = f
        self.index = index
        self.name = name
        (_, self.type, self.flags, _, self.offset, self.size, self.link, self.info, _,
         self.entsize) = hdr

    @property
    def data(self):
        """The section's bytes; zeros for SHT_NOBITS (.bss)."""
        if self.type == SHT_NOBITS:
            return bytes(self.size)
        return self._file.raw[self.offset:self.offset + self.size]

    @property
    def executable(self):
        return self.type == SHT_PROGBITS and bool(self.flags & SHF_EXECINSTR)

    def __repr__(self):
        return "<Section %d %s size=%d>" % (self.index, self.name, self.size)


class Symbol:
    __slots__ = ("index", "name", "type", "bind", "shndx", "value", "size")

    def __init__(self, index, name, info, shndx, value, size):
        self.index = index
        self.name = name
        self.type = info & 0xF
        self.bind = info >> 4
        self.shndx = shndx
        self.value = value
        self.size = size

    def __repr__(self):
        return "<Symbol %s sec=%d value=%d>" % (self.name, self.shndx, self.value)


class Rel:
    __slots__ = ("offset", "sym", "type")

    def __init__(self, offset, sym, rtype):
        self.offset = offset
        self.sym = sym
        self.type = rtype


class ELFFile:
    """A parsed ELF64 little-endian EM_BPF relocatable object."""

    def __init__(self, raw):
        self.raw = bytes(raw)
        self.sections = []
        self.symbols = []
        self._by_name = {}
        self._parse()

    def _parse(self):
        raw = self.raw
        if len(raw) < _EHDR.size or raw[:4] != b"\x7fELF":
            raise ParseError("not an ELF file")
        ident = raw[:16]
        if ident[4] != 2:
            raise ParseError("not a 64-bit ELF object")
        if ident[5] != 1:
            raise ParseError("not a little-endian ELF object")
        (_, e_type, machine, _, _, _, shoff, _, _, _, _, shentsize, shnum,
         shstrndx) = _EHDR.unpack_from(raw)
        if machine != EM_BPF:
            raise ParseError("not a BPF object (ELF machine %d)" % machine)
        if e_type != ET_REL:
            raise ParseError("not a relocatable object (ELF type %d)" % e_type)
        if shentsize != _SHDR.size:
            raise ParseError("bad section header size %d" % shentsize)
        if shnum == 0 or shoff + shnum * shentsize > len(raw):
            raise ParseError("section headers out of bounds")
        hdrs = [_SHDR.unpack_from(raw, shoff + i * shentsize) for i in range(shnum)]
        if shstrndx >= shnum:
            raise ParseError("bad section name table index %d" % shstrndx)
        shstr = self._bytes_of(hdrs[shstrndx], "section names")
        for i, h in enumerate(hdrs):
            sec = Section(self, i, _cstr(shstr, h[0], "section name"), h)
            if sec.type != SHT_NOBITS:
                self._bytes_of(h, sec.name)
            elif sec.size > MAX_NOBITS:
                raise ParseError("section %s: size %d is implausible" % (sec.name, sec.size))
            self.sections.append(sec)
            self._by_name.setdefault(sec.name, sec)
        symtabs = [s for s in self.sections if s.type == SHT_SYMTAB]
        if len(symtabs) != 1:
            raise ParseError("expected one symbol table, found %d" % len(symtabs))
        self._parse_symbols(symtabs[0])

    def _bytes_of(self, hdr, what):
        off, size = hdr[4], hdr[5]
        if off + size > len(self.raw):
            raise ParseError("section %s out of bounds" % what)
        return self.raw[off:off + size]

    def _parse_symbols(self, symtab):
        if symtab.link >= len(self.sections):
            raise ParseError("symbol table: bad string table index")
        strtab = self.sections[symtab.link].data
        data = symtab.data
        if symtab.entsize != _SYM.size or len(data) % _SYM.size:
            raise ParseError("symbol table: bad entry size")
        for i, (name, info, _, shndx, value, size) in enumerate(_SYM.iter_unpack(data)):
            if shndx < SHN_LORESERVE and shndx >= len(self.sections):
                raise ParseError("symbol %d: bad section index %d" % (i, shndx))
            self.symbols.append(Symbol(i, _cstr(strtab, name, "symbol name"), info, shndx,
                                       value, size))

    def section(self, name):
        return self._by_name.get(name)

    def relocations(self, target):
        """SHT_REL records that apply to section `target`, as Rel with Symbol."""
        out = []
        for sec in self.sections:
            if sec.type != SHT_REL or sec.info != target.index:
                continue
            data = sec.data
            if len(data) % _REL.size:
                raise ParseError("%s: bad relocation section size" % sec.name)
            for off, info in _REL.iter_unpack(data):
                symi = info >> 32
                if symi >= len(self.symbols):
                    raise ParseError("%s: bad symbol index %d" % (sec.name, symi))
                out.append(Rel(off, self.symbols[symi], info & 0xFFFFFFFF))
        return out


def _cstr(table, off, what):
    end = table.find(b"\0", off)
    if off >= len(table) or end < 0:
        raise ParseError("bad %s offset %d" % (what, off))
    try:
        return table[off:end].decode()
    except UnicodeDecodeError:
        raise ParseError("%s at %d is not UTF-8" % (what, off)) from None
