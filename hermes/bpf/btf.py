"""BTF: parse, fix up, sanitize and marshal (kernel Documentation/bpf/btf.rst).

No syscalls here: the loader hands marshal()'s bytes to BPF_BTF_LOAD itself.

A Spec is a list of mutable type objects indexed by type id (0 is Void).  The
running kernel's BTF (~5 MB, ~127k types) is too big to decode on every start,
so load_kernel_spec() returns a lazy KernelSpec: it keeps the raw words, knows
where each type starts and where each name lives (an index cached on disk,
keyed by the BTF's size and CRC), and decodes only the types CO-RE asks for.
"""

import array
import bisect
import mmap
import os
import struct
import sys
import zlib

from .errors import ParseError

MAGIC = 0xEB9F
VERSION = 1
HEADER = struct.Struct("HBBIIIII")  # byte order prefixed at use
HEADER_LEN = 24

# enum btf_kind (include/uapi/linux/btf.h); the comment names the kernel that added it.
KIND_VOID = 0
KIND_INT = 1
KIND_PTR = 2
KIND_ARRAY = 3
KIND_STRUCT = 4
KIND_UNION = 5
KIND_ENUM = 6
KIND_FWD = 7
KIND_TYPEDEF = 8
KIND_VOLATILE = 9
KIND_CONST = 10
KIND_RESTRICT = 11
KIND_FUNC = 12          # 5.0
KIND_FUNC_PROTO = 13    # 5.0
KIND_VAR = 14           # 5.2
KIND_DATASEC = 15       # 5.2
KIND_FLOAT = 16         # 5.13
KIND_DECL_TAG = 17      # 5.16
KIND_TYPE_TAG = 18      # 5.17
KIND_ENUM64 = 19        # 6.0
KIND_MAX = 19
# Not a kind: "global FUNC linkage" (5.6), probed and sanitized like one.
FEATURE_FUNC_GLOBAL = 0x100
# What sanitize() can replace, in probing order (FUNC before its global linkage).
SANITIZABLE_KINDS = (KIND_FUNC, FEATURE_FUNC_GLOBAL, KIND_DATASEC, KIND_FLOAT,
                     KIND_DECL_TAG, KIND_TYPE_TAG, KIND_ENUM64)

INT_SIGNED, INT_CHAR, INT_BOOL = 1, 2, 4
LINKAGE_STATIC, LINKAGE_GLOBAL, LINKAGE_EXTERN = 0, 1, 2

# Section names whose DATASECs describe externs; libbpf lays them out itself.
EXTERN_SECTIONS = (".kconfig", ".ksyms")
MAX_RESOLVE_DEPTH = 32  # as libbpf: deeper chains are treated as cycles


class _Rec:
    """A small mutable record; fields are its __slots__, compared by value."""
    __slots__ = ()
    _defaults = {}
    _fields = ()

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        # subclasses that only change `kind` declare empty __slots__
        cls._fields = next((c.__dict__["__slots__"] for c in cls.__mro__
                            if c.__dict__.get("__slots__")), ())

    def __init__(self, *args, **kw):
        fields = self._fields
        if len(args) > len(fields):
            raise TypeError("%s takes at most %d arguments" % (type(self).__name__, len(fields)))
        for f in fields[len(args):]:
            v = kw.pop(f, self._defaults.get(f, 0))
            setattr(self, f, list(v) if isinstance(v, list) else v)
        for f, v in zip(fields, args):
            setattr(self, f, v)
        if kw:
            raise TypeError("unknown field(s) %s" % ", ".join(kw))

    def __eq__(self, other):
        return type(self) is type(other) and all(
            getattr(self, f) == getattr(other, f) for f in self._fields)

    __hash__ = None

    def __repr__(self):
        return "%s(%s)" % (type(self).__name__, ", ".join(
            "%s=%r" % (f, getattr(self, f)) for f in self._fields))

    def __deepcopy__(self, memo):
        return self.copy()

    def copy(self):
        new = object.__new__(type(self))
        for f in self._fields:
            v = getattr(self, f)
            if isinstance(v, list):
                v = [x.copy() if isinstance(x, _Rec) else x for x in v]
            setattr(new, f, v)
        return new


class Type(_Rec):
    kind = KIND_VOID
    _defaults = {"name": ""}


class Void(Type):
    __slots__ = ("name",)


class Int(Type):
    __slots__ = ("name", "size", "encoding", "offset", "bits")
    kind = KIND_INT


class _Ref(Type):
    __slots__ = ("name", "type")


class Ptr(_Ref):
    __slots__ = ()
    kind = KIND_PTR


class Typedef(_Ref):
    __slots__ = ()
    kind = KIND_TYPEDEF


class Volatile(_Ref):
    __slots__ = ()
    kind = KIND_VOLATILE


class Const(_Ref):
    __slots__ = ()
    kind = KIND_CONST


class Restrict(_Ref):
    __slots__ = ()
    kind = KIND_RESTRICT


class TypeTag(_Ref):
    __slots__ = ()
    kind = KIND_TYPE_TAG


class Array(Type):
    __slots__ = ("name", "type", "index_type", "nelems")
    kind = KIND_ARRAY


class Member(_Rec):
    __slots__ = ("name", "type", "offset", "bitfield_size")  # offset in bits
    _defaults = {"name": ""}


class Struct(Type):
    __slots__ = ("name", "size", "members")
    kind = KIND_STRUCT
    _defaults = {"name": "", "members": []}


class Union(Struct):
    __slots__ = ()
    kind = KIND_UNION


class Enum(Type):
    __slots__ = ("name", "size", "signed", "values")  # values: [(name, int)]
    kind = KIND_ENUM
    _defaults = {"name": "", "size": 4, "signed": False, "values": []}


class Enum64(Enum):
    __slots__ = ()
    kind = KIND_ENUM64
    _defaults = {"name": "", "size": 8, "signed": False, "values": []}


class Fwd(Type):
    __slots__ = ("name", "union")
    kind = KIND_FWD
    _defaults = {"name": "", "union": False}


class Func(Type):
    __slots__ = ("name", "type", "linkage")
    kind = KIND_FUNC


class Param(_Rec):
    __slots__ = ("name", "type")
    _defaults = {"name": ""}


class FuncProto(Type):
    __slots__ = ("name", "type", "params")
    kind = KIND_FUNC_PROTO
    _defaults = {"name": "", "params": []}


class Var(Type):
    __slots__ = ("name", "type", "linkage")
    kind = KIND_VAR


class VarSecinfo(_Rec):
    __slots__ = ("type", "offset", "size")


class Datasec(Type):
    __slots__ = ("name", "size", "vars")
    kind = KIND_DATASEC
    _defaults = {"name": "", "vars": []}


class Float(Type):
    __slots__ = ("name", "size")
    kind = KIND_FLOAT


class DeclTag(Type):
    __slots__ = ("name", "type", "component_idx")
    kind = KIND_DECL_TAG
    _defaults = {"name": "", "component_idx": -1}


_REF_KINDS = {KIND_PTR: Ptr, KIND_TYPEDEF: Typedef, KIND_VOLATILE: Volatile,
              KIND_CONST: Const, KIND_RESTRICT: Restrict, KIND_TYPE_TAG: TypeTag}
# Kinds CO-RE and resolve() look through.
MODIFIERS = (KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_TYPE_TAG)

# Record length in 4-byte words beyond struct btf_type: fixed part, per vlen item.
_EXTRA = [0] * 32
_EXTRA[KIND_INT] = _EXTRA[KIND_VAR] = _EXTRA[KIND_DECL_TAG] = 1
_EXTRA[KIND_ARRAY] = 3
_PER_VLEN = [0] * 32
for _k in (KIND_STRUCT, KIND_UNION, KIND_DATASEC, KIND_ENUM64):
    _PER_VLEN[_k] = 3
_PER_VLEN[KIND_ENUM] = _PER_VLEN[KIND_FUNC_PROTO] = 2


def essential_name(name):
    """Name without libbpf's flavour suffix: "task_struct___v2" -> "task_struct"."""
    if "___" not in name:
        return name
    for i in range(len(name) - 5, -1, -1):
        if name[i] != "_" and name[i + 1:i + 4] == "___" and name[i + 4] != "_":
            return name[:i + 1]
    return name


def _s32(v):
    return v - (1 << 32) if v & 0x80000000 else v


# --- decoding ---------------------------------------------------------------

def _read_header(data):
    if len(data) < HEADER_LEN:
        raise ParseError("btf: %d bytes is too short for a header" % len(data))
    for order in "<>":
        magic, version, flags, hdr_len, type_off, type_len, str_off, str_len = \
            struct.unpack_from(order + HEADER.format, data)
        if magic == MAGIC:
            break
    else:
        raise ParseError("btf: bad magic 0x%04x" % struct.unpack_from("<H", data)[0])
    if version != VERSION:
        raise ParseError("btf: unsupported version %d" % version)
    if hdr_len < HEADER_LEN or hdr_len > len(data):
        raise ParseError("btf: bad header length %d" % hdr_len)
    body = len(data) - hdr_len
    if type_off + type_len > body or str_off + str_len > body:
        raise ParseError("btf: section out of bounds (types %d+%d, strings %d+%d, %d bytes)"
                         % (type_off, type_len, str_off, str_len, body))
    if type_off % 4 or type_len % 4:
        raise ParseError("btf: type section not 4-byte aligned")
    if type_off < str_off + str_len and str_off < type_off + type_len:
        raise ParseError("btf: type and string sections overlap")
    t0, s0 = hdr_len + type_off, hdr_len + str_off
    if str_len == 0 or data[s0] != 0 or data[s0 + str_len - 1] != 0:
        raise ParseError("btf: string section must start and end with NUL")
    return order, t0, t0 + type_len, s0, s0 + str_len


def _words(data, lo, hi, order):
    """The type section as native 32-bit words (zero-copy when we can)."""
    native = "<" if sys.byteorder == "little" else ">"
    if order == native:
        return memoryview(data)[lo:hi].cast("I")
    w = array.array("I")
    w.frombytes(bytes(data[lo:hi]))
    w.byteswap()
    return w


def _scan(words):
    """Word offset of every type (index 0 is a placeholder for Void)."""
    offs = array.array("I", [0])
    append = offs.append
    extra, per = _EXTRA, _PER_VLEN
    n = len(words)
    p = 0
    while p < n:
        if p + 3 > n:
            raise ParseError("btf: type [%d] truncated" % len(offs))
        info = words[p + 1]
        kind = (info >> 24) & 0x1F
        if not 0 < kind <= KIND_MAX:
            raise ParseError("btf: type [%d] has unknown kind %d" % (len(offs), kind))
        append(p)
        p += 3 + extra[kind] + (info & 0xFFFF) * per[kind]
    if p != n:
        raise ParseError("btf: type [%d] runs past the type section" % (len(offs) - 1))
    return offs


class _Reader:
    """Decodes one type record at a time from the raw section."""

    def __init__(self, data, words, offs, s_lo, s_hi):
        self.data, self.words, self.offs = data, words, offs
        self.s_lo, self.s_hi = s_lo, s_hi
        self.count = len(offs)
        self.strs = {0: ""}

    def str(self, off, tid):
        s = self.strs.get(off)
        if s is None:
            a = self.s_lo + off
            if a >= self.s_hi:
                raise ParseError("btf: %sstring offset %d out of range"
                                 % ("type [%d]: " % tid if tid else "", off))
            s = bytes(self.data[a:self.data.find(b"\0", a, self.s_hi)]).decode(
                "utf-8", "surrogateescape")
            self.strs[off] = s
        return s

    def ref(self, t, tid):
        if t >= self.count:
            raise ParseError("btf: type [%d] refers to type [%d] of %d" % (tid, t, self.count))
        return t

    def type(self, tid):
        try:
            return self._type(tid)
        except IndexError:  # only reachable through a damaged offsets index
            raise ParseError("btf: type [%d] out of bounds" % tid) from None

    def _type(self, tid):
        w, ref, st_ = self.words, self.ref, self.str
        p = self.offs[tid]
        name = st_(w[p], tid)
        info, st = w[p + 1], w[p + 2]
        kind, vlen, kflag = (info >> 24) & 0x1F, info & 0xFFFF, info >> 31
        q = p + 3
        if kind == KIND_INT:
            v = w[q]
            return Int(name, st, (v >> 24) & 0x0F, (v >> 16) & 0xFF, v & 0xFF)
        cls = _REF_KINDS.get(kind)
        if cls:
            return cls(name, ref(st, tid))
        if kind == KIND_ARRAY:
            return Array(name, ref(w[q], tid), ref(w[q + 1], tid), w[q + 2])
        if kind in (KIND_STRUCT, KIND_UNION):
            members = []
            for m in range(q, q + 3 * vlen, 3):
                off, bits = w[m + 2], 0
                if kflag:
                    off, bits = off & 0xFFFFFF, off >> 24
                members.append(Member(st_(w[m], tid), ref(w[m + 1], tid), off, bits))
            return (Struct if kind == KIND_STRUCT else Union)(name, st, members)
        if kind == KIND_ENUM:
            conv = _s32 if kflag else int
            return Enum(name, st, bool(kflag),
                        [(st_(w[m], tid), conv(w[m + 1])) for m in range(q, q + 2 * vlen, 2)])
        if kind == KIND_ENUM64:
            vals = []
            for m in range(q, q + 3 * vlen, 3):
                v = w[m + 1] | w[m + 2] << 32
                if kflag and v >> 63:
                    v -= 1 << 64
                vals.append((st_(w[m], tid), v))
            return Enum64(name, st, bool(kflag), vals)
        if kind == KIND_FWD:
            return Fwd(name, bool(kflag))
        if kind == KIND_FUNC:
            return Func(name, ref(st, tid), vlen)
        if kind == KIND_FUNC_PROTO:
            return FuncProto(name, ref(st, tid), [
                Param(st_(w[m], tid), ref(w[m + 1], tid)) for m in range(q, q + 2 * vlen, 2)])
        if kind == KIND_VAR:
            return Var(name, ref(st, tid), w[q])
        if kind == KIND_DATASEC:
            return Datasec(name, st, [VarSecinfo(ref(w[m], tid), w[m + 1], w[m + 2])
                                      for m in range(q, q + 3 * vlen, 3)])
        if kind == KIND_FLOAT:
            return Float(name, st)
        if kind == KIND_DECL_TAG:
            return DeclTag(name, ref(st, tid), _s32(w[q]))
        raise ParseError("btf: type [%d] has unknown kind %d" % (tid, kind))


# --- Spec --------------------------------------------------------------------

class Spec:
    """BTF as a list of types indexed by id; mutable, copy before changing."""

    def __init__(self, types=None, byteorder="<"):
        self.types = types if types is not None else [Void()]
        self.byteorder = byteorder
        self._index = None
        self._reader = None

    @classmethod
    def parse(cls, data):
        order, t_lo, t_hi, s_lo, s_hi = _read_header(data)
        words = _words(data, t_lo, t_hi, order)
        r = _Reader(data, words, _scan(words), s_lo, s_hi)
        spec = cls([Void()] + [r.type(i) for i in range(1, r.count)], order)
        spec._reader = r  # kept for string_at(): .BTF.ext refers to the raw strings
        return spec

    def string_at(self, off):
        """The string at `off` in the string section of the blob this was parsed from."""
        if self._reader is None:
            raise ParseError("btf: no string table (spec was not parsed)")
        return self._reader.str(off, 0)

    def __eq__(self, other):
        return isinstance(other, Spec) and len(self.types) == len(other.types) and all(
            a == b for a, b in zip(self.types, other.types))

    __hash__ = None

    def __len__(self):
        return len(self.types)

    def copy(self):
        new = Spec([t.copy() for t in self.types], self.byteorder)
        new._reader = self._reader  # immutable raw data, shared
        return new

    def __deepcopy__(self, memo):
        return self.copy()

    def add(self, t):
        """Append a type; returns its id."""
        self.types.append(t)
        self._index = None
        return len(self.types) - 1

    def type(self, tid):
        """types[tid], or ParseError naming the bad id."""
        if not 0 <= tid < len(self.types):
            raise ParseError("btf: no type [%d] (have %d)" % (tid, len(self.types)))
        return self.types[tid]

    def name_of(self, tid):
        return self.type(tid).name

    # Lookup by name.  The index maps essential names (flavour stripped) to
    # ids, so CO-RE candidate search and exact find() share it.
    def candidates(self, name):
        """Ids whose essential name equals essential_name(name), in id order."""
        if self._index is None:
            idx = {}
            for i, t in enumerate(self.types):
                if t.name:
                    idx.setdefault(essential_name(t.name), []).append(i)
            self._index = idx
        return list(self._index.get(essential_name(name), ()))

    def find(self, name, kind=None):
        return [i for i in self.candidates(name) if self.types[i].name == name
                and (kind is None or self.types[i].kind == kind)]

    def resolve(self, tid):
        """Id reached by skipping typedef/const/volatile/restrict/type_tag."""
        for _ in range(MAX_RESOLVE_DEPTH):
            t = self.type(tid)
            if t.kind not in MODIFIERS:
                return tid
            tid = t.type
        raise ParseError("btf: type chain too deep or cyclic at [%d]" % tid)

    def size_of(self, tid):
        """Size in bytes (libbpf's btf__resolve_size); ParseError if unsized."""
        first, nelems = tid, 1
        for _ in range(MAX_RESOLVE_DEPTH):
            t = self.type(tid)
            k = t.kind
            if k in (KIND_INT, KIND_STRUCT, KIND_UNION, KIND_ENUM, KIND_ENUM64,
                     KIND_DATASEC, KIND_FLOAT):
                return nelems * t.size
            if k == KIND_PTR:
                return nelems * 8  # BPF pointers are 64-bit
            if k in MODIFIERS or k == KIND_VAR:
                tid = t.type
            elif k == KIND_ARRAY:
                nelems *= t.nelems
                tid = t.type
            else:
                raise ParseError("btf: type [%d] (%s) has no size" % (first, kind_name(k)))
        raise ParseError("btf: type [%d]: chain too deep or cyclic" % first)

    # --- loader fix-ups --------------------------------------------------

    def fixup_datasecs(self, section_size, symbol_offset):
        """Fill DATASEC sizes and VAR offsets clang left as 0 (libbpf semantics).

        section_size(secname) -> int|None; symbol_offset(secname, varname) -> int|None.
        """
        for t in self.types:
            if t.kind != KIND_DATASEC:
                continue
            if t.name not in EXTERN_SECTIONS and t.size == 0:
                size = section_size(t.name)
                if not size:
                    raise ParseError("btf: datasec %s: no ELF section size" % t.name)
                t.size = size
                missing = []
                for v in t.vars:
                    var = self.type(v.type)
                    if var.kind != KIND_VAR:
                        raise ParseError("btf: datasec %s: member [%d] is not a VAR"
                                         % (t.name, v.type))
                    if var.linkage == LINKAGE_EXTERN:
                        continue
                    off = symbol_offset(t.name, var.name)
                    if off is None:
                        missing.append(var.name)
                    else:
                        v.offset = off
                if missing:
                    raise ParseError("btf: datasec %s: no ELF symbol for variable(s) %s"
                                     % (t.name, ", ".join(missing)))
            t.vars.sort(key=lambda v: v.offset)

    # --- encoding ----------------------------------------------------------

    def marshal(self):
        """Raw BTF: header, types (ids preserved), strings.

        A parsed spec keeps its original string section in front, so string
        offsets that .BTF.ext line_info holds stay valid; new names are appended
        once each.
        """
        strs, blob = {"": 0}, [b"\0"]
        if self._reader is not None:
            r = self._reader
            blob = [bytes(r.data[r.s_lo:r.s_hi])]
            off = 0
            for piece in blob[0].split(b"\0")[:-1]:
                strs.setdefault(piece.decode("utf-8", "surrogateescape"), off)
                off += len(piece) + 1
        size = [len(blob[0])]

        def s(name):
            off = strs.get(name)
            if off is None:
                b = name.encode("utf-8", "surrogateescape")
                if b"\0" in b:
                    raise ParseError("btf: name %r contains NUL" % name)
                off = strs[name] = size[0]
                blob.append(b + b"\0")
                size[0] += len(b) + 1
            return off

        out = array.array("I")
        try:
            for tid, t in enumerate(self.types[1:], 1):
                _encode(t, out, s)
        except (OverflowError, TypeError, AttributeError, ValueError) as e:
            raise ParseError("btf: cannot encode type [%d]: %s" % (tid, e)) from None
        if self.byteorder != ("<" if sys.byteorder == "little" else ">"):
            out.byteswap()
        types = out.tobytes()
        strings = b"".join(blob)
        hdr = struct.pack(self.byteorder + HEADER.format, MAGIC, VERSION, 0, HEADER_LEN,
                          0, len(types), len(types), len(strings))
        return hdr + types + strings


def _info(kind, vlen=0, kflag=0):
    if not 0 <= vlen <= 0xFFFF:
        raise ValueError("vlen %d out of range" % vlen)
    return kflag << 31 | kind << 24 | vlen


def _encode(t, out, s):
    k = t.kind
    ext = out.extend
    if k == KIND_INT:
        ext((s(t.name), _info(k), t.size, t.encoding << 24 | t.offset << 16 | t.bits))
    elif k in _REF_KINDS:
        ext((s(t.name), _info(k), t.type))
    elif k == KIND_ARRAY:
        ext((s(t.name), _info(k), 0, t.type, t.index_type, t.nelems))
    elif k in (KIND_STRUCT, KIND_UNION):
        kflag = int(any(m.bitfield_size for m in t.members))
        ext((s(t.name), _info(k, len(t.members), kflag), t.size))
        for m in t.members:
            off = m.bitfield_size << 24 | m.offset if kflag else m.offset
            if kflag and (m.offset >> 24 or m.bitfield_size >> 8):
                raise ValueError("bitfield member %s out of range" % m.name)
            ext((s(m.name), m.type, off))
    elif k == KIND_ENUM:
        ext((s(t.name), _info(k, len(t.values), int(t.signed)), t.size))
        for n, v in t.values:
            ext((s(n), v & 0xFFFFFFFF))
    elif k == KIND_ENUM64:
        ext((s(t.name), _info(k, len(t.values), int(t.signed)), t.size))
        for n, v in t.values:
            v &= (1 << 64) - 1
            ext((s(n), v & 0xFFFFFFFF, v >> 32))
    elif k == KIND_FWD:
        ext((s(t.name), _info(k, 0, int(t.union)), 0))
    elif k == KIND_FUNC:
        ext((s(t.name), _info(k, t.linkage), t.type))
    elif k == KIND_FUNC_PROTO:
        ext((s(t.name), _info(k, len(t.params)), t.type))
        for p in t.params:
            ext((s(p.name), p.type))
    elif k == KIND_VAR:
        ext((s(t.name), _info(k), t.type, t.linkage))
    elif k == KIND_DATASEC:
        ext((s(t.name), _info(k, len(t.vars)), t.size))
        for v in t.vars:
            ext((v.type, v.offset, v.size))
    elif k == KIND_FLOAT:
        ext((s(t.name), _info(k), t.size))
    elif k == KIND_DECL_TAG:
        ext((s(t.name), _info(k), t.type, t.component_idx & 0xFFFFFFFF))
    else:
        raise ValueError("cannot encode kind %d" % k)


_KIND_NAMES = {v: n[5:] for n, v in globals().items() if n.startswith("KIND_") and n != "KIND_MAX"}


def kind_name(kind):
    return _KIND_NAMES.get(kind, "kind %d" % kind)


# --- sanitizing for older kernels ---------------------------------------------

def sanitize(spec, unsupported):
    """A copy of spec without the kinds in `unsupported`, replaced as libbpf does.

    `unsupported` holds KIND_* values (and FEATURE_FUNC_GLOBAL); ids are kept, an
    ENUM64 placeholder INT may be appended.  DATASEC and VAR go together (5.2).
    """
    out = spec.copy()
    if not unsupported:
        return out
    types = out.types
    no_datasec = bool({KIND_DATASEC, KIND_VAR} & unsupported)
    no_func = bool({KIND_FUNC, KIND_FUNC_PROTO} & unsupported)
    placeholder = 0
    for i in range(1, len(types)):
        t = types[i]
        k = t.kind
        if (k == KIND_VAR and no_datasec) or (k == KIND_DECL_TAG and KIND_DECL_TAG in unsupported):
            # size 1: anything bigger could exceed the variable it stands for
            types[i] = Int(t.name, 1, 0, 0, 8)
        elif k == KIND_DATASEC and no_datasec:
            # members point at the (now INT) VARs and keep the variables' names
            types[i] = Struct(t.name.replace(".", "_"), t.size, [
                Member(out.type(v.type).name, v.type, v.offset * 8, 0) for v in t.vars])
        elif k == KIND_FUNC_PROTO and no_func:
            types[i] = Enum("", 4, False, [(p.name, p.type) for p in t.params])
        elif k == KIND_FUNC and no_func:
            types[i] = Typedef(t.name, t.type)
        elif k == KIND_FUNC and FEATURE_FUNC_GLOBAL in unsupported:
            t.linkage = LINKAGE_STATIC
        elif k == KIND_FLOAT and KIND_FLOAT in unsupported:
            # anonymous: "float" is no valid struct name for C dumpers
            types[i] = Struct("", t.size, [])
        elif k == KIND_TYPE_TAG and KIND_TYPE_TAG in unsupported:
            types[i] = Const("", t.type)
        elif k == KIND_ENUM and KIND_ENUM64 in unsupported:
            t.signed = False  # the enum kflag came with ENUM64 (6.0)
            t.values = [(n, v & 0xFFFFFFFF) for n, v in t.values]
        elif k == KIND_ENUM64 and KIND_ENUM64 in unsupported:
            if not placeholder:
                placeholder = len(types)
                types.append(Int("enum64_placeholder", 1, 0, 0, 8))
            types[i] = Union(t.name, t.size, [Member(n, placeholder, 0, 0) for n, _ in t.values])
    out._index = None
    return out


def probe_blob(kind):
    """Minimal BTF using `kind` (or FEATURE_FUNC_GLOBAL), for BPF_BTF_LOAD probing."""
    s = Spec()
    int_id = s.add(Int("int", 4, INT_SIGNED, 0, 32))
    if kind in (KIND_FUNC, KIND_FUNC_PROTO, FEATURE_FUNC_GLOBAL):
        proto = s.add(FuncProto("", int_id, [Param("a", int_id)]))
        s.add(Func("a", proto, LINKAGE_GLOBAL if kind == FEATURE_FUNC_GLOBAL else LINKAGE_STATIC))
    elif kind in (KIND_VAR, KIND_DATASEC):
        var = s.add(Var("a", int_id, LINKAGE_GLOBAL))
        s.add(Datasec(".data", 4, [VarSecinfo(var, 0, 4)]))
    elif kind == KIND_DECL_TAG:
        var = s.add(Var("a", int_id, LINKAGE_GLOBAL))
        s.add(DeclTag("tag", var, -1))
    elif kind == KIND_TYPE_TAG:
        tag = s.add(TypeTag("tag", int_id))
        s.add(Ptr("", tag))
    elif kind == KIND_FLOAT:
        s.add(Float("float", 4))
    elif kind == KIND_ENUM64:
        s.add(Enum64("e", 8, False, [("a", 1 << 40)]))
    elif kind == KIND_ENUM:
        s.add(Enum("e", 4, False, [("a", 1)]))
    elif kind == KIND_FWD:
        s.add(Fwd("f", False))
    elif kind in (KIND_STRUCT, KIND_UNION):
        s.add((Struct if kind == KIND_STRUCT else Union)("s", 4, [Member("a", int_id, 0, 0)]))
    elif kind == KIND_ARRAY:
        s.add(Array("", int_id, int_id, 2))
    elif kind in _REF_KINDS:
        s.add(_REF_KINDS[kind]("t" if kind == KIND_TYPEDEF else "", int_id))
    elif kind != KIND_INT:
        raise ParseError("btf: no probe for kind %d" % kind)
    return s.marshal()


# --- the running kernel's BTF -----------------------------------------------------

_CACHE_MAGIC = b"HRMSBTF1"
_CACHE_HDR = struct.Struct("=8sQIII")  # magic, size, crc32, ntypes, nnamed


class _LazyTypes:
    """Sequence of a KernelSpec's types, decoded on first access."""

    def __init__(self, reader):
        self._r = reader
        self._memo = {0: Void()}

    def __len__(self):
        return self._r.count

    def __getitem__(self, tid):
        t = self._memo.get(tid)
        if t is None:
            if not isinstance(tid, int) or not 0 < tid < self._r.count:
                raise IndexError(tid)
            t = self._memo[tid] = self._r.type(tid)
        return t

    def __iter__(self):
        return (self[i] for i in range(len(self)))


class KernelSpec(Spec):
    """Read-only view of a large BTF blob; types are decoded on demand."""

    def __init__(self, data, index=None):
        order, t_lo, t_hi, s_lo, s_hi = _read_header(data)
        words = _words(data, t_lo, t_hi, order)
        offs, hashes, ids = index if index else _build_index(data, words, s_lo, s_hi)
        reader = _Reader(data, words, offs, s_lo, s_hi)
        self._hashes, self._ids = hashes, ids
        super().__init__(_LazyTypes(reader), order)
        self._reader = reader

    def _name_bytes(self, tid):
        r = self._reader
        a = r.s_lo + r.words[r.offs[tid]]
        return bytes(r.data[a:r.data.find(b"\0", a, r.s_hi)]) if a < r.s_hi else b""

    def candidates(self, name):
        ess = essential_name(name).encode("utf-8", "surrogateescape")
        h, hashes = zlib.crc32(ess), self._hashes
        i = bisect.bisect_left(hashes, h)
        out = []
        while i < len(hashes) and hashes[i] == h:
            tid = self._ids[i]
            if essential_name(self._name_bytes(tid).decode("utf-8", "surrogateescape")) == \
                    ess.decode("utf-8", "surrogateescape"):
                out.append(tid)
            i += 1
        return sorted(out)

    def add(self, t):
        raise ParseError("btf: the kernel spec is read-only; copy() it first")

    def __deepcopy__(self, memo):
        return self  # read-only by contract; a real copy would decode ~100k types


def _build_index(data, words, s_lo, s_hi):
    """Type offsets and (crc32(essential name), id) pairs sorted by hash."""
    offs = _scan(words)
    find = data.find
    pairs = []
    for tid in range(1, len(offs)):
        off = words[offs[tid]]
        if off:
            a = s_lo + off
            if a >= s_hi:
                raise ParseError("btf: type [%d]: string offset %d out of range" % (tid, off))
            name = bytes(data[a:find(b"\0", a, s_hi)])
            if b"___" in name:
                name = essential_name(name.decode("utf-8", "surrogateescape")).encode(
                    "utf-8", "surrogateescape")
            pairs.append((zlib.crc32(name), tid))
    pairs.sort()
    return offs, array.array("I", [h for h, _ in pairs]), array.array("I", [i for _, i in pairs])


def _cache_dirs():
    env = os.environ.get("HERMES_CACHE_DIR")
    if env:
        return [env]
    dirs = []
    if os.geteuid() == 0:
        dirs.append("/var/cache/hermes")
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    dirs.append(os.path.join(xdg, "hermes"))
    return dirs


def _cache_name(path):
    return "btf-%08x.idx" % zlib.crc32(os.path.abspath(path).encode())


def _load_index(path, size, crc):
    for d in _cache_dirs():
        try:
            with open(os.path.join(d, _cache_name(path)), "rb") as f:
                raw = f.read()
        except OSError:
            continue
        if len(raw) < _CACHE_HDR.size:
            continue
        magic, csize, ccrc, ntypes, nnamed = _CACHE_HDR.unpack_from(raw)
        if (magic, csize, ccrc) != (_CACHE_MAGIC, size, crc) or \
                len(raw) != _CACHE_HDR.size + 4 * (ntypes + 2 * nnamed):
            continue
        arrs, pos = [], _CACHE_HDR.size
        for n in (ntypes, nnamed, nnamed):
            a = array.array("I")
            a.frombytes(raw[pos:pos + 4 * n])
            arrs.append(a)
            pos += 4 * n
        return tuple(arrs)
    return None


def _store_index(path, size, crc, index):
    offs, hashes, ids = index
    blob = _CACHE_HDR.pack(_CACHE_MAGIC, size, crc, len(offs), len(hashes)) + \
        offs.tobytes() + hashes.tobytes() + ids.tobytes()
    for d in _cache_dirs():
        tmp = os.path.join(d, "%s.%d.tmp" % (_cache_name(path), os.getpid()))
        try:
            os.makedirs(d, exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(blob)
            os.replace(tmp, os.path.join(d, _cache_name(path)))
            return
        except OSError:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def _read_btf(path):
    """The file's bytes.  sysfs serves reads 4 KiB at a time (~5 ms for vmlinux);
    Linux 6.16+ lets us mmap it instead.  Only sysfs: a regular file could be
    truncated under a mapping."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise ParseError("btf: %s: %s" % (path, e.strerror)) from None
    try:
        size = os.fstat(fd).st_size
        if size and os.path.abspath(path).startswith("/sys/"):
            try:
                return mmap.mmap(fd, size, mmap.MAP_PRIVATE, mmap.PROT_READ)
            except (OSError, ValueError):
                pass
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read()
    except OSError as e:
        raise ParseError("btf: %s: %s" % (path, e.strerror)) from None
    finally:
        os.close(fd)


def load_kernel_spec(path="/sys/kernel/btf/vmlinux"):
    """The running kernel's BTF as a lazy KernelSpec (index cached on disk)."""
    data = _read_btf(path)
    size, crc = len(data), zlib.crc32(data)
    index = _load_index(path, size, crc)
    if index is not None and len(index[0]) >= 1:
        try:
            return KernelSpec(data, index)
        except ParseError:
            pass  # a damaged cache: rebuild
    spec = KernelSpec(data)
    r = spec._reader
    _store_index(path, size, crc, (r.offs, spec._hashes, spec._ids))
    return spec
