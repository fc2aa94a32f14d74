"""ELF object -> CollectionSpec (cilium/ebpf's elf_reader): no syscalls."""

import struct

from . import btf as _btf
from . import btf_ext as _btf_ext
from . import elf
from . import sys as _sys
from .errors import BPFError, ParseError
from .linker import Linker
from .spec import (CollectionSpec, MapSpec, ProgramSpec, VariableSpec, internal_map_name,
                   is_data_section, object_name, section_def)

MAPS_SEC = ".maps"
LIBBPF_PIN_BY_NAME = 1

# __uint(name, val) members of a BTF map definition (libbpf's parse_btf_map_def).
_INT_FIELDS = ("type", "max_entries", "map_flags", "numa_node", "key_size", "value_size",
               "pinning", "map_extra")


def load(path):
    """Parse the object at `path` into a CollectionSpec."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ParseError("%s: %s" % (path, e.strerror)) from None
    try:
        return parse(raw, object_name(path))
    except BPFError as e:
        raise e.add_context(path)
    except RecursionError:
        raise ParseError("%s: type graph too deep" % path) from None


def parse(raw, name="obj"):
    return _Reader(elf.ELFFile(raw), name).collection()


class _Reader:
    def __init__(self, f, name):
        self.f = f
        self.cs = CollectionSpec(name)
        self.ext = None
        self.data_maps = {}      # shndx -> map name
        self.btf_maps = {}       # .maps var offset -> map name

    def collection(self):
        cs = self.cs
        self._btf()
        license = self._cstring("license") or ""
        version = self.f.section("version")
        kver = struct.unpack("<I", version.data[:4])[0] if version and version.size >= 4 else 0
        self._data_maps()
        self._btf_defined_maps()
        linker = Linker(self.f, self.ext, self._resolve_data)
        for unit in linker.entry_units():
            sd = section_def(unit.sec.name)
            if sd is None:
                raise ParseError("program %s: unknown section %r" % (unit.name, unit.sec.name))
            prog = ProgramSpec(unit.name, unit.sec.name, *sd)
            prog.license = license
            prog.kern_version = kver
            if self.ext is not None:
                prog.func_info_rec_size = self.ext.func_info_rec_size
                prog.line_info_rec_size = self.ext.line_info_rec_size
            try:
                linker.link(prog, unit)
            except BPFError as e:
                raise e.add_context("program " + unit.name)
            cs.programs[prog.name] = prog
        return cs

    def _cstring(self, name):
        sec = self.f.section(name)
        if sec is None:
            return None
        return sec.data.split(b"\0", 1)[0].decode("ascii", "replace")

    def _btf(self):
        sec = self.f.section(".BTF")
        if sec is None:
            return
        spec = _btf.Spec.parse(sec.data)

        def section_size(name):
            s = self.f.section(name)
            return s.size if s is not None else None

        def symbol_offset(secname, varname):
            s = self.f.section(secname)
            for sym in self.f.symbols:
                if s is not None and sym.shndx == s.index and sym.name == varname \
                        and sym.type == elf.STT_OBJECT:
                    return sym.value
            return None

        spec.fixup_datasecs(section_size, symbol_offset)
        self.cs.btf = spec
        ext = self.f.section(".BTF.ext")
        if ext is not None:
            self.ext = _btf_ext.parse(ext.data, spec.string_at)

    def _datasec(self, name):
        btf = self.cs.btf
        if btf is None:
            return None, None
        for tid in btf.find(name, _btf.KIND_DATASEC):
            return tid, btf.types[tid]
        return None, None

    def _data_maps(self):
        cs = self.cs
        for sec in self.f.sections:
            if not is_data_section(sec) or sec.size == 0:
                continue
            name = internal_map_name(cs.name, sec.name)
            rodata = sec.name.startswith(".rodata")
            flags = _sys.BPF_F_MMAPABLE | (_sys.BPF_F_RDONLY_PROG if rodata else 0)
            m = MapSpec(name, _sys.BPF_MAP_TYPE_ARRAY, 4, sec.size, 1, flags)
            m.section = sec.name
            m.data = bytearray(sec.data)
            m.freeze = rodata
            tid, ds = self._datasec(sec.name)
            if ds is not None:
                m.value_type_id = tid
                for vsi in ds.vars:
                    var = cs.btf.types[vsi.type]
                    if var.kind != _btf.KIND_VAR:
                        continue
                    if vsi.offset + vsi.size > sec.size:
                        raise ParseError("variable %s: outside %s" % (var.name, sec.name))
                    cs.variables[var.name] = VariableSpec(var.name, name, sec.name, vsi.offset,
                                                          vsi.size, var.type, var.linkage)
            cs.maps[name] = m
            self.data_maps[sec.index] = name

    def _btf_defined_maps(self):
        sec = self.f.section(MAPS_SEC)
        if sec is None:
            return
        tid, ds = self._datasec(MAPS_SEC)
        if ds is None:
            raise ParseError(".maps section without BTF")
        btf = self.cs.btf
        defined = []
        for vsi in ds.vars:
            var = btf.types[vsi.type]
            if var.kind != _btf.KIND_VAR:
                raise ParseError(".maps: entry %d is not a variable" % vsi.type)
            try:
                m = self._map_def(var.name, var.type)
            except BPFError as e:
                raise e.add_context("map " + var.name)
            self.cs.maps[m.name] = m
            self.btf_maps[vsi.offset] = m.name
            defined.append((vsi, m))
        for vsi, m in defined:
            self._map_initialisers(sec, vsi, m)

    def _map_def(self, name, type_id):
        btf = self.cs.btf
        struct_t = btf.types[btf.resolve(type_id)]
        if struct_t.kind != _btf.KIND_STRUCT:
            raise ParseError("definition is not a struct")
        f = {}
        for mem in struct_t.members:
            t = btf.types[btf.resolve(mem.type)]
            if mem.name in _INT_FIELDS:
                arr = btf.types[t.type] if t.kind == _btf.KIND_PTR else None
                if arr is None or arr.kind != _btf.KIND_ARRAY:
                    raise ParseError("%s is not __uint()" % mem.name)
                f[mem.name] = arr.nelems
            elif mem.name in ("key", "value"):
                if t.kind != _btf.KIND_PTR:
                    raise ParseError("%s is not __type()" % mem.name)
                f[mem.name + "_type_id"] = t.type
                f[mem.name + "_size"] = btf.size_of(t.type)
            elif mem.name == "values":
                f["values"] = (mem, t)
            else:
                raise ParseError("unknown field %r" % mem.name)
        if "type" not in f:
            raise ParseError("no map type")
        m = MapSpec(name, f["type"], f.get("key_size", 0), f.get("value_size", 0),
                    f.get("max_entries", 0), f.get("map_flags", 0))
        m.key_type_id = f.get("key_type_id", 0)
        m.value_type_id = f.get("value_type_id", 0)
        m.numa_node = f.get("numa_node", 0)
        m.map_extra = f.get("map_extra", 0)
        m.pinning = f.get("pinning", 0)
        if m.pinning not in (0, LIBBPF_PIN_BY_NAME):
            raise ParseError("unsupported pinning %d" % m.pinning)
        if "values" in f:
            self._values(m, *f["values"])
        return m

    def _values(self, m, mem, arr):
        """__array(values, struct inner): a map-in-map's inner definition."""
        btf = self.cs.btf
        if arr.kind != _btf.KIND_ARRAY:
            raise ParseError("values is not __array()")
        ptr = btf.types[btf.resolve(arr.type)]
        if ptr.kind != _btf.KIND_PTR:
            raise ParseError("values element is not a pointer")
        if m.type in (_sys.BPF_MAP_TYPE_ARRAY_OF_MAPS, _sys.BPF_MAP_TYPE_HASH_OF_MAPS):
            m.inner = self._map_def(m.name + ".inner", ptr.type)
        elif m.type != _sys.BPF_MAP_TYPE_PROG_ARRAY:
            raise ParseError("values on a map that holds neither maps nor programs")
        # Map-in-map and prog arrays hold 4-byte fds (kernel map_check_btf).
        m.key_size = m.key_size or 4
        m.value_size = m.value_size or 4
        m.values_offset = mem.offset // 8

    def _map_initialisers(self, sec, vsi, m):
        """Slots of a map-in-map set statically (`.values = { [1] = &inner }`)."""
        if m.inner is None:
            return
        for r in self.f.relocations(sec):
            if not vsi.offset <= r.offset < vsi.offset + vsi.size:
                continue
            slot, rem = divmod(r.offset - vsi.offset - m.values_offset, 8)
            target = self.btf_maps.get(r.sym.value) if r.sym.shndx == sec.index else None
            if rem or slot < 0 or target is None:
                raise ParseError("bad initialiser at .maps+%d" % r.offset)
            m.contents[slot] = target

    def _resolve_data(self, sym, addend):
        """(map name, pseudo kind, value offset) for an ld_imm64's symbol."""
        maps_sec = self.f.section(MAPS_SEC)
        if maps_sec is not None and sym.shndx == maps_sec.index:
            name = self.btf_maps.get(sym.value)
            return (name, _sys.BPF_PSEUDO_MAP_FD, 0) if name else None
        name = self.data_maps.get(sym.shndx)
        if name is None:
            return None
        offset = sym.value + addend
        if not 0 <= offset <= self.cs.maps[name].value_size:
            raise ParseError("reference past the end of %s" % name)
        return name, _sys.BPF_PSEUDO_MAP_VALUE, offset
