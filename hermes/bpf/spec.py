"""What an object file asks for, parsed: programs, maps and global variables.

A CollectionSpec is pure data made from an ELF object with no syscalls (cilium/ebpf's
CollectionSpec).  Programs come out linked (subprograms appended, call offsets
fixed) with their map references recorded by name; file descriptors are patched
in only when collection.load() creates the maps.
"""

import copy
import os

from . import btf as _btf
from . import btf_ext as _btf_ext
from . import elf
from . import sys as _sys
from .errors import ParseError

# libbpf's section names (libbpf.c section_defs): prefix -> (program type,
# expected attach type or None).  A name matches exactly or as "prefix/...".
SECTION_DEFS = [
    ("socket", _sys.BPF_PROG_TYPE_SOCKET_FILTER, None),
    ("sk_reuseport/migrate", _sys.BPF_PROG_TYPE_SK_REUSEPORT,
     _sys.BPF_SK_REUSEPORT_SELECT_OR_MIGRATE),
    ("sk_reuseport", _sys.BPF_PROG_TYPE_SK_REUSEPORT, _sys.BPF_SK_REUSEPORT_SELECT),
    ("kprobe", _sys.BPF_PROG_TYPE_KPROBE, None),
    ("kretprobe", _sys.BPF_PROG_TYPE_KPROBE, None),
    ("tc", _sys.BPF_PROG_TYPE_SCHED_CLS, None),
    ("classifier", _sys.BPF_PROG_TYPE_SCHED_CLS, None),
    ("action", _sys.BPF_PROG_TYPE_SCHED_ACT, None),
    ("tracepoint", _sys.BPF_PROG_TYPE_TRACEPOINT, None),
    ("tp", _sys.BPF_PROG_TYPE_TRACEPOINT, None),
    ("raw_tracepoint", _sys.BPF_PROG_TYPE_RAW_TRACEPOINT, None),
    ("raw_tp", _sys.BPF_PROG_TYPE_RAW_TRACEPOINT, None),
    ("xdp", _sys.BPF_PROG_TYPE_XDP, _sys.BPF_XDP),
    ("perf_event", _sys.BPF_PROG_TYPE_PERF_EVENT, None),
    ("lwt_in", _sys.BPF_PROG_TYPE_LWT_IN, None),
    ("lwt_out", _sys.BPF_PROG_TYPE_LWT_OUT, None),
    ("lwt_xmit", _sys.BPF_PROG_TYPE_LWT_XMIT, None),
    ("cgroup_skb/ingress", _sys.BPF_PROG_TYPE_CGROUP_SKB, _sys.BPF_CGROUP_INET_INGRESS),
    ("cgroup_skb/egress", _sys.BPF_PROG_TYPE_CGROUP_SKB, _sys.BPF_CGROUP_INET_EGRESS),
    ("cgroup/skb", _sys.BPF_PROG_TYPE_CGROUP_SKB, None),
    ("cgroup/sock_create", _sys.BPF_PROG_TYPE_CGROUP_SOCK, _sys.BPF_CGROUP_INET_SOCK_CREATE),
    ("cgroup/sock", _sys.BPF_PROG_TYPE_CGROUP_SOCK, _sys.BPF_CGROUP_INET_SOCK_CREATE),
    ("sockops", _sys.BPF_PROG_TYPE_SOCK_OPS, _sys.BPF_CGROUP_SOCK_OPS),
    ("sk_skb/stream_parser", _sys.BPF_PROG_TYPE_SK_SKB, _sys.BPF_SK_SKB_STREAM_PARSER),
    ("sk_skb/stream_verdict", _sys.BPF_PROG_TYPE_SK_SKB, _sys.BPF_SK_SKB_STREAM_VERDICT),
    ("sk_skb", _sys.BPF_PROG_TYPE_SK_SKB, None),
    ("sk_msg", _sys.BPF_PROG_TYPE_SK_MSG, _sys.BPF_SK_MSG_VERDICT),
    ("flow_dissector", _sys.BPF_PROG_TYPE_FLOW_DISSECTOR, _sys.BPF_FLOW_DISSECTOR),
    ("sk_lookup", _sys.BPF_PROG_TYPE_SK_LOOKUP, _sys.BPF_SK_LOOKUP),
    ("syscall", _sys.BPF_PROG_TYPE_SYSCALL, None),
]


def section_def(name):
    """(prog_type, expected_attach_type or None) for a program section name, or None."""
    for prefix, ptype, attach in SECTION_DEFS:
        if name == prefix or name.startswith(prefix + "/"):
            return ptype, attach
    return None


class MapSpec:
    """A map as declared: BTF-defined in .maps, or a global-data section."""

    def __init__(self, name, type, key_size, value_size, max_entries, flags=0):
        self.name = name
        self.type = type
        self.key_size = key_size
        self.value_size = value_size
        self.max_entries = max_entries
        self.flags = flags
        self.numa_node = 0
        self.map_extra = 0
        self.pinning = 0            # LIBBPF_PIN_BY_NAME = 1
        self.key_type_id = 0
        self.value_type_id = 0
        self.inner = None           # MapSpec of a map-in-map's inner map
        self.contents = {}          # slot -> inner map name (map-in-map initialisers)
        self.section = None         # ".data" etc. for global data
        self.data = None            # bytearray: initial value of a global-data map
        self.freeze = False

    def __repr__(self):
        return "<MapSpec %s type=%d %d/%d x%d flags=%#x>" % (
            self.name, self.type, self.key_size, self.value_size, self.max_entries, self.flags)


class VariableSpec:
    """A global variable: a named window into a global-data map's value."""

    def __init__(self, name, map_name, section, offset, size, type_id, linkage):
        self.name = name
        self.map_name = map_name
        self.section = section
        self.offset = offset
        self.size = size
        self.type_id = type_id
        self.linkage = linkage


class MapRef:
    """An ld_imm64 that must carry a map fd (kind PSEUDO_MAP_FD) or value address."""
    __slots__ = ("insn", "map", "kind", "offset")

    def __init__(self, insn, map_name, kind, offset=0):
        self.insn = insn
        self.map = map_name
        self.kind = kind
        self.offset = offset


class ProgramSpec:
    def __init__(self, name, section, prog_type, attach_type):
        self.name = name
        self.section = section
        self.type = prog_type
        self.expected_attach_type = attach_type   # None: the section sets none
        self.insns = bytearray()
        self.license = "GPL"
        self.kern_version = 0
        self.map_refs = []
        self.func_info = []       # raw bpf_func_info records, insn_off in instructions
        self.line_info = []
        self.core_relos = []      # CoreRelo with program-relative byte offsets
        self.func_info_rec_size = _btf_ext.FUNC_INFO_SIZE
        self.line_info_rec_size = _btf_ext.LINE_INFO_SIZE

    @property
    def insn_count(self):
        return len(self.insns) // 8


class CollectionSpec:
    def __init__(self, name):
        self.name = name
        self.maps = {}
        self.programs = {}
        self.variables = {}
        self.btf = None

    def copy(self):
        return copy.deepcopy(self)

    def set_variable(self, name, value):
        """Set a global's initial value before load; ints are range-checked."""
        var = self.variables.get(name)
        if var is None:
            raise ParseError("no global variable %r" % name)
        data = self.maps[var.map_name].data
        data[var.offset:var.offset + var.size] = encode_value(self.btf, var, value)

    def variable_value(self, name):
        var = self.variables[name]
        data = self.maps[var.map_name].data
        return decode_value(self.btf, var, bytes(data[var.offset:var.offset + var.size]))


def _scalar(btf, var):
    """(signed, kind) of a settable variable, or ParseError."""
    t = btf.types[btf.resolve(var.type_id)]
    if t.kind == _btf.KIND_INT:
        if t.encoding & 4:      # BTF_INT_BOOL
            return False, "bool"
        return bool(t.encoding & 1), "int"
    if t.kind in (_btf.KIND_ENUM, _btf.KIND_ENUM64):
        return bool(t.signed), "enum"
    raise ParseError("variable %s: only integer, bool and enum globals can be set" % var.name)


def encode_value(btf, var, value):
    signed, kind = _scalar(btf, var)
    if isinstance(value, str):
        try:
            value = int(value, 0)
        except ValueError:
            low = value.lower()
            if kind == "bool" and low in ("true", "false"):
                value = int(low == "true")
            else:
                raise ParseError("variable %s: %r is not an integer" % (var.name, value)) from None
    bits = var.size * 8
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    if kind == "bool":
        lo, hi = 0, 1
    if not lo <= value <= hi:
        raise ParseError("variable %s: %d does not fit in %d bytes (%d..%d)"
                         % (var.name, value, var.size, lo, hi))
    return value.to_bytes(var.size, "little", signed=signed)


def decode_value(btf, var, raw):
    try:
        signed, _ = _scalar(btf, var)
    except ParseError:
        return raw.hex()
    return int.from_bytes(raw, "little", signed=signed)


def object_name(path):
    """libbpf's object name: the file's basename up to its first dot."""
    return os.path.basename(path).split(".", 1)[0]


def internal_map_name(obj_name, section):
    """Name of a global-data map as libbpf gives it (so pins match bpftool's).

    The object-name prefix is cut to fit the kernel's 15 characters and dropped
    for custom sections (".data.foo"); characters the kernel refuses become '_'.
    """
    sfx = section[:_sys.BPF_OBJ_NAME_LEN - 1]
    pfx_len = 0
    if "." not in section[1:]:
        pfx_len = min(_sys.BPF_OBJ_NAME_LEN - max(7, len(sfx)) - 1, len(obj_name))
    name = obj_name[:pfx_len] + sfx
    return "".join(c if c.isalnum() or c in "_." else "_" for c in name)


def is_data_section(sec):
    if sec.type not in (elf.SHT_PROGBITS, elf.SHT_NOBITS) or sec.executable:
        return False
    return any(sec.name == p or sec.name.startswith(p + ".")
               for p in (".data", ".rodata", ".bss"))
