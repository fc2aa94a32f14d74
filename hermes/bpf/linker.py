"""Static linking of a program: bpf-to-bpf calls, callbacks, map references.

A program is its entry function followed by a copy of every function it reaches
through calls (BPF_PSEUDO_CALL) or function pointers (BPF_PSEUDO_FUNC ld_imm64),
each copied once per program, as libbpf does.  Call immediates become relative to
the copy; func_info, line_info and CO-RE records follow each copy to its new place.
"""

import struct

from . import elf
from . import sys as _sys
from .btf_ext import CoreRelo
from .errors import ParseError
from .spec import MapRef

INSN = 8
_LD_IMM64 = _sys.BPF_LD | _sys.BPF_IMM | _sys.BPF_DW
_CALL = _sys.BPF_JMP | _sys.BPF_CALL
_INSN = struct.Struct("<BBhi")


class Unit:
    """One function: instructions [start, end) of an executable section."""
    __slots__ = ("sec", "name", "start", "end")

    def __init__(self, sec, name, start, end):
        self.sec = sec
        self.name = name
        self.start = start
        self.end = end


class Linker:
    """Links programs of one ELF file.

    resolve_data(sym, addend) -> MapRef-like (map name, kind, offset) or None tells
    the linker which map a non-code symbol stands for.
    """

    def __init__(self, f, ext, resolve_data):
        self.f = f
        self.ext = ext
        self.resolve_data = resolve_data
        self.units = {}     # (shndx, start insn) -> Unit
        self.relocs = {}    # shndx -> {insn index: Rel}
        for sym in f.symbols:
            if sym.type != elf.STT_FUNC or sym.shndx in (elf.SHN_UNDEF,) or sym.shndx >= len(f.sections):
                continue
            sec = f.sections[sym.shndx]
            if not sec.executable:
                continue
            if sym.value % INSN or sym.size % INSN or sym.value + sym.size > sec.size:
                raise ParseError("function %s: bad bounds" % sym.name)
            start = sym.value // INSN
            self.units[(sec.index, start)] = Unit(sec, sym.name, start, start + sym.size // INSN)
        for sec in f.sections:
            if sec.executable:
                rels = self.relocs[sec.index] = {}
                for r in f.relocations(sec):
                    if r.offset % INSN or r.offset >= sec.size:
                        raise ParseError("%s: relocation at bad offset %d" % (sec.name, r.offset))
                    rels[r.offset // INSN] = r

    def entry_units(self):
        """Functions in program sections (everything but .text) are programs."""
        return sorted((u for u in self.units.values() if u.sec.name != ".text"),
                      key=lambda u: (u.sec.index, u.start))

    def link(self, prog, entry):
        insns = bytearray()
        placed = {}
        queue = []

        def place(unit):
            key = (unit.sec.index, unit.start)
            if key not in placed:
                placed[key] = len(insns) // INSN
                off = unit.start * INSN
                insns.extend(unit.sec.data[off:unit.end * INSN])
                queue.append(unit)
            return placed[key]

        def unit_at(shndx, idx, what):
            unit = self.units.get((shndx, idx))
            if unit is None:
                raise ParseError("%s: %s target is not the start of a function" % (prog.name, what))
            return unit

        place(entry)
        while queue:
            unit = queue.pop(0)
            base = placed[(unit.sec.index, unit.start)]
            rels = self.relocs.get(unit.sec.index, {})
            i = unit.start
            while i < unit.end:
                at = (base + i - unit.start) * INSN
                code, regs, off, imm = _INSN.unpack_from(insns, at)
                rel = rels.get(i)
                if code == _CALL and regs >> 4 == _sys.BPF_PSEUDO_CALL:
                    if rel is None:     # call within the same section, already relative
                        tsec, tidx = unit.sec.index, i + imm + 1
                    else:
                        tsec, tidx = rel.sym.shndx, rel.sym.value // INSN + imm + 1
                    target = place(unit_at(tsec, tidx, "call"))
                    _INSN.pack_into(insns, at, code, regs, off, target - (at // INSN) - 1)
                elif code == _LD_IMM64:
                    if i + 1 >= unit.end:
                        raise ParseError("%s: truncated ld_imm64" % prog.name)
                    if rel is not None:
                        self._ld_imm64(prog, insns, at, regs, imm, rel, place, unit_at)
                    i += 1
                elif rel is not None:
                    raise ParseError("%s: relocation on instruction %d (opcode %#x) that takes none"
                                     % (prog.name, i, code))
                i += 1
            self._ext_records(prog, unit, base)
        prog.insns = insns
        return prog

    def _ld_imm64(self, prog, insns, at, regs, imm, rel, place, unit_at):
        sym = rel.sym
        if sym.shndx == elf.SHN_UNDEF or sym.shndx >= len(self.f.sections):
            raise ParseError("%s: unsupported extern symbol %s" % (prog.name, sym.name or "?"))
        sec = self.f.sections[sym.shndx]
        if sec.executable:     # address of a function: a callback
            if (sym.value + imm) % INSN:
                raise ParseError("%s: misaligned function address" % prog.name)
            target = place(unit_at(sec.index, (sym.value + imm) // INSN, "callback"))
            regs = (regs & 0x0F) | (_sys.BPF_PSEUDO_FUNC << 4)
            _INSN.pack_into(insns, at, _LD_IMM64, regs, 0, target - (at // INSN) - 1)
            return
        ref = self.resolve_data(sym, imm)
        if ref is None:
            raise ParseError("%s: relocation against %s in %s, which is no map"
                             % (prog.name, sym.name or "a section", sec.name))
        name, kind, offset = ref
        prog.map_refs.append(MapRef(at // INSN, name, kind, offset))

    def _ext_records(self, prog, unit, base):
        """Copy the unit's .BTF.ext records, rebased to where the unit now sits."""
        if self.ext is None:
            return
        lo, hi = unit.start * INSN, unit.end * INSN
        sec = unit.sec.name
        for src, dst in ((self.ext.func_info, prog.func_info),
                         (self.ext.line_info, prog.line_info)):
            for rec in src.get(sec, ()):
                off = int.from_bytes(rec[:4], "little")
                if lo <= off < hi:
                    new = base + (off - lo) // INSN
                    dst.append(new.to_bytes(4, "little") + rec[4:])
        for r in self.ext.core_relos.get(sec, ()):
            if lo <= r.insn_off < hi and r.insn_off % INSN == 0:
                prog.core_relos.append(r._replace(insn_off=(base * INSN) + r.insn_off - lo))
            elif r.insn_off % INSN:
                raise ParseError("%s: CO-RE relocation at misaligned offset" % prog.name)
