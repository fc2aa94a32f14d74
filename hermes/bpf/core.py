"""CO-RE: resolve .BTF.ext relocations against the target kernel's BTF and patch insns.

Semantics follow libbpf's relo_core.c (see also cilium/ebpf btf/core.go):
a local type is matched by essential name (flavour suffix "___x" dropped) and
kind against the target; a field access string ("0:3:1") is replayed on each
candidate, by member name, through anonymous members.  Candidates must agree.
An unresolvable relocation poisons its instruction (a call to helper 0xbad2310)
so the verifier rejects it only if it is reachable.  No syscalls.
"""

import struct
from typing import NamedTuple

from . import btf
from .errors import ParseError

# enum bpf_core_relo_kind (include/uapi/linux/bpf.h)
FIELD_BYTE_OFFSET = 0
FIELD_BYTE_SIZE = 1
FIELD_EXISTS = 2
FIELD_SIGNED = 3
FIELD_LSHIFT_U64 = 4
FIELD_RSHIFT_U64 = 5
TYPE_ID_LOCAL = 6
TYPE_ID_TARGET = 7
TYPE_EXISTS = 8
TYPE_SIZE = 9
ENUMVAL_EXISTS = 10
ENUMVAL_VALUE = 11
TYPE_MATCHES = 12   # Linux 6.2 / libbpf 1.1

KIND_NAMES = ("byte_off", "byte_sz", "field_exists", "signed", "lshift_u64", "rshift_u64",
              "local_type_id", "target_type_id", "type_exists", "type_size",
              "enumval_exists", "enumval_value", "type_matches")

POISON_IMM = 0xBAD2310  # libbpf's marker helper id (195896080)
MAX_SPEC_LEN = 64       # BPF_CORE_SPEC_MAX_LEN
_MASK64 = (1 << 64) - 1

_INSN = struct.Struct("<BBhi")
# BPF instruction classes and fields (include/uapi/linux/bpf_common.h)
_LD, _LDX, _ST, _STX, _ALU, _JMP, _ALU64 = 0, 1, 2, 3, 4, 5, 7
_LD_IMM64 = 0x18
_CALL = 0x85
_SIZES = {0x00: 4, 0x08: 2, 0x10: 1, 0x18: 8}   # BPF_W, BPF_H, BPF_B, BPF_DW
_SIZE_CODES = {v: k for k, v in _SIZES.items()}


class Poison(NamedTuple):
    insn_idx: int
    reason: str


def _is_field(kind):
    return kind <= FIELD_RSHIFT_U64


def _is_type(kind):
    return kind in (TYPE_ID_LOCAL, TYPE_ID_TARGET, TYPE_EXISTS, TYPE_SIZE, TYPE_MATCHES)


def _is_enumval(kind):
    return kind in (ENUMVAL_EXISTS, ENUMVAL_VALUE)


def _skip(spec, tid):
    """(id, type) after skipping modifiers and typedefs."""
    tid = spec.resolve(tid)
    return tid, spec.type(tid)


_ENUMS = (btf.KIND_ENUM, btf.KIND_ENUM64)
_COMPOSITES = (btf.KIND_STRUCT, btf.KIND_UNION)


def _kind_compat(a, b):
    return a.kind == b.kind or (a.kind in _ENUMS and b.kind in _ENUMS)


class _Acc:
    """One step of a spec: member `idx` of composite `type_id` (name set), or array index."""
    __slots__ = ("type_id", "idx", "name")

    def __init__(self, type_id, idx, name=None):
        self.type_id, self.idx, self.name = type_id, idx, name


class _Spec:
    """An access string replayed on one BTF (libbpf's bpf_core_spec)."""

    def __init__(self, spec, root_id, kind):
        self.btf, self.root_id, self.kind = spec, root_id, kind
        self.acc = []          # named members and array indices
        self.raw = []          # every index, anonymous members included
        self.bit_offset = 0


def _parse_access(access_str):
    parts = access_str.split(":")
    if not access_str or len(parts) > MAX_SPEC_LEN or not all(p.isdigit() for p in parts):
        raise ParseError("bad access string %r" % access_str)
    return [int(p) for p in parts]


def _is_flex(spec, parent, arr):
    """A trailing zero-length array member may be indexed past its end."""
    if parent is None or parent.name is None or arr.nelems:
        return False
    return parent.idx == len(spec.type(parent.type_id).members) - 1


def _parse_spec(local, root_id, access_str, kind):
    raw = _parse_access(access_str)
    s = _Spec(local, root_id, kind)
    s.raw = raw
    local.type(root_id)
    if _is_type(kind):
        if raw != [0]:
            raise ParseError("type relocation needs access string \"0\", not %r" % access_str)
        return s
    tid, t = _skip(local, root_id)
    if _is_enumval(kind):
        if t.kind not in _ENUMS or len(raw) != 1 or raw[0] >= len(t.values):
            raise ParseError("enum value access %r out of range" % access_str)
        s.acc.append(_Acc(tid, raw[0], t.values[raw[0]][0]))
        return s
    if not _is_field(kind):
        raise ParseError("unknown relocation kind %d" % kind)
    s.acc.append(_Acc(tid, raw[0]))
    s.bit_offset = raw[0] * local.size_of(tid) * 8
    for idx in raw[1:]:
        tid, t = _skip(local, tid)
        if t.kind in _COMPOSITES:
            if idx >= len(t.members):
                raise ParseError("member %d of [%d] out of range" % (idx, tid))
            m = t.members[idx]
            s.bit_offset += m.offset
            if m.name:
                s.acc.append(_Acc(tid, idx, m.name))
            tid = m.type
        elif t.kind == btf.KIND_ARRAY:
            flex = _is_flex(local, s.acc[-1], t)
            tid, _ = _skip(local, t.type)
            if not flex and idx >= t.nelems:
                raise ParseError("index %d of array [%d] out of range" % (idx, tid))
            s.acc.append(_Acc(tid, idx))
            s.bit_offset += idx * local.size_of(tid) * 8
        else:
            raise ParseError("access %r reaches type [%d] (%s), not a struct, union or array"
                             % (access_str, tid, btf.kind_name(t.kind)))
    return s


def _describe(s):
    """"struct sk_buff___local.len (0:3)" for messages."""
    t = s.btf.type(s.root_id)
    kw = {btf.KIND_STRUCT: "struct ", btf.KIND_UNION: "union ", btf.KIND_ENUM: "enum ",
          btf.KIND_ENUM64: "enum ", btf.KIND_TYPEDEF: "typedef "}.get(t.kind, "")
    out = kw + (t.name or "(anon)")
    if _is_enumval(s.kind) and s.acc:
        out += "::" + s.acc[0].name
    elif _is_field(s.kind):
        if s.acc and s.acc[0].idx:
            out += "[%d]" % s.acc[0].idx
        for a in s.acc[1:]:
            out += "." + a.name if a.name is not None else "[%d]" % a.idx
    return "%s (%s)" % (out, ":".join(map(str, s.raw)))


# --- type compatibility (libbpf semantics) ----------------------------------------

def _fields_compat(lb, lid, tb, tid):
    for _ in range(MAX_SPEC_LEN):
        lid, lt = _skip(lb, lid)
        tid, tt = _skip(tb, tid)
        if lt.kind in _COMPOSITES and tt.kind in _COMPOSITES:
            return True
        if not _kind_compat(lt, tt):
            return False
        k = lt.kind
        if k in (btf.KIND_PTR, btf.KIND_FLOAT):
            return True
        if k in (btf.KIND_FWD,) + _ENUMS:
            a, b = btf.essential_name(lt.name), btf.essential_name(tt.name)
            return not a or not b or a == b
        if k == btf.KIND_INT:
            return lt.offset == 0 and tt.offset == 0  # old bitfield-style ints are rejected
        if k != btf.KIND_ARRAY:
            return False
        lid, tid = lt.type, tt.type
    raise ParseError("type nesting too deep")


def _types_compat(lb, lid, tb, tid, level=MAX_SPEC_LEN):
    while True:
        level -= 1
        if level < 0:
            raise ParseError("type nesting too deep")
        lid, lt = _skip(lb, lid)
        tid, tt = _skip(tb, tid)
        if not _kind_compat(lt, tt):
            return False
        k = lt.kind
        if k in (btf.KIND_VOID, btf.KIND_FWD) + _COMPOSITES + _ENUMS:
            return True
        if k == btf.KIND_INT:
            return lt.offset == 0 and tt.offset == 0
        if k in (btf.KIND_PTR, btf.KIND_ARRAY):
            lid, tid = lt.type, tt.type
        elif k == btf.KIND_FUNC_PROTO:
            if len(lt.params) != len(tt.params):
                return False
            for lp, tp in zip(lt.params, tt.params):
                if not _types_compat(lb, lp.type, tb, tp.type, level):
                    return False
            lid, tid = lt.type, tt.type
        else:
            return False


def _names_match(local_name, target_name):
    if not target_name:
        return not local_name
    return btf.essential_name(local_name) == btf.essential_name(target_name)


def _types_match(lb, lid, tb, tid, behind_ptr=False, level=MAX_SPEC_LEN):
    """TYPE_MATCHES (libbpf 1.1): a stricter, name-based structural match."""
    while True:
        level -= 1
        if level < 0:
            raise ParseError("type nesting too deep")
        lid, lt = _skip(lb, lid)
        tid, tt = _skip(tb, tid)
        if not _names_match(lt.name, tt.name):
            return False
        lk, tk = lt.kind, tt.kind
        if lk == btf.KIND_VOID:
            return tk == lk
        if lk == btf.KIND_FWD:
            if behind_ptr and tk in _COMPOSITES:
                return (tk == btf.KIND_UNION) == lt.union
            return tk == lk and lt.union == tt.union
        if lk in _ENUMS:
            if tk not in _ENUMS or lt.size != tt.size or len(lt.values) > len(tt.values):
                return False
            return all(any(_names_match(n, m) for m, _ in tt.values) for n, _ in lt.values)
        if lk in _COMPOSITES:
            if behind_ptr:
                return lk == tk or (tk == btf.KIND_FWD and (lk == btf.KIND_UNION) == tt.union)
            if lk != tk or len(lt.members) > len(tt.members):
                return False
            for lm in lt.members:
                if not any(_names_match(lm.name, tm.name) and
                           _types_match(lb, lm.type, tb, tm.type, behind_ptr, level)
                           for tm in tt.members):
                    return False
            return True
        if lk != tk:
            return False
        if lk == btf.KIND_INT:
            return lt.size == tt.size and \
                (lt.encoding & btf.INT_SIGNED) == (tt.encoding & btf.INT_SIGNED)
        if lk == btf.KIND_PTR:
            behind_ptr = True
            lid, tid = lt.type, tt.type
        elif lk == btf.KIND_ARRAY:
            if lt.nelems != tt.nelems:
                return False
            lid, tid = lt.type, tt.type
        elif lk == btf.KIND_FUNC_PROTO:
            if len(lt.params) != len(tt.params):
                return False
            for lp, tp in zip(lt.params, tt.params):
                if not _types_match(lb, lp.type, tb, tp.type, behind_ptr, level):
                    return False
            lid, tid = lt.type, tt.type
        else:
            return False


# --- replaying a local spec on a target candidate ---------------------------------

def _match_member(local, lacc, target, tid, ts):
    """Find local member lacc by name in target composite tid (through anonymous
    members); on success extends ts and returns the member's type id, else None."""
    lt = local.type(lacc.type_id)
    lm = lt.members[lacc.idx]
    tid, tt = _skip(target, tid)
    if tt.kind not in _COMPOSITES:
        return None
    for i, m in enumerate(tt.members):
        if len(ts.raw) >= MAX_SPEC_LEN:
            raise ParseError("struct nesting too deep")
        ts.bit_offset += m.offset
        ts.raw.append(i)
        if not m.name:
            found = _match_member(local, lacc, target, m.type, ts)
            if found is not None:
                return found
        elif m.name == lm.name:
            if _fields_compat(local, lm.type, target, m.type):
                ts.acc.append(_Acc(tid, i, m.name))
                return m.type
            ts.bit_offset -= m.offset
            ts.raw.pop()
            return None
        ts.bit_offset -= m.offset
        ts.raw.pop()
    return None


def _match_spec(ls, target, cand_id):
    """The local spec replayed on target type cand_id, or None if it does not fit."""
    ts = _Spec(target, cand_id, ls.kind)
    if _is_type(ls.kind):
        ok = (_types_match if ls.kind == TYPE_MATCHES else _types_compat)(
            ls.btf, ls.root_id, target, cand_id)
        return ts if ok else None
    if _is_enumval(ls.kind):
        tid, tt = _skip(target, cand_id)
        if tt.kind not in _ENUMS:
            return None
        want = btf.essential_name(ls.acc[0].name)
        for i, (name, _) in enumerate(tt.values):
            if btf.essential_name(name) == want:
                ts.acc.append(_Acc(tid, i, name))
                ts.raw.append(i)
                return ts
        return None
    tid = cand_id
    for i, lacc in enumerate(ls.acc):
        tid, tt = _skip(target, tid)
        if lacc.name is not None:
            tid = _match_member(ls.btf, lacc, target, tid, ts)
            if tid is None:
                return None
            continue
        if i > 0:
            if tt.kind != btf.KIND_ARRAY:
                return None
            if not _is_flex(target, ts.acc[-1] if ts.acc else None, tt) and lacc.idx >= tt.nelems:
                return None
            tid, _ = _skip(target, tt.type)
        if len(ts.raw) >= MAX_SPEC_LEN:
            raise ParseError("struct nesting too deep")
        ts.acc.append(_Acc(tid, lacc.idx))
        ts.raw.append(lacc.idx)
        ts.bit_offset += lacc.idx * target.size_of(tid) * 8
    return ts


# --- computing the values ------------------------------------------------------

class _Res:
    __slots__ = ("orig", "new", "poison", "validate", "orig_sz", "new_sz", "orig_tid",
                 "new_tid", "bad_memsz", "why")

    def __init__(self):
        self.orig = self.new = self.orig_sz = self.new_sz = self.orig_tid = self.new_tid = 0
        self.poison = self.bad_memsz = False
        self.validate = True
        self.why = ""


class _Poisoned(Exception):
    pass


def _field_value(relo_kind, s, res, local):
    """(value, memory size, field type id) of a field relo on spec s (None: missing)."""
    if relo_kind == FIELD_EXISTS:
        return int(s is not None), 0, 0
    if s is None:
        raise _Poisoned("field not found in target kernel")
    b = s.btf
    acc = s.acc[-1]
    if acc.name is None:  # a[n]: only offset and size make sense
        sz = b.size_of(acc.type_id)
        if relo_kind == FIELD_BYTE_OFFSET:
            return s.bit_offset // 8, sz, acc.type_id
        if relo_kind == FIELD_BYTE_SIZE:
            return sz, 0, 0
        raise ParseError("%s relocation cannot apply to an array element" % KIND_NAMES[relo_kind])
    m = b.type(acc.type_id).members[acc.idx]
    ftid, mt = _skip(b, m.type)
    bit_off, bit_sz = s.bit_offset, m.bitfield_size
    if bit_sz:
        byte_sz = mt.size if mt.kind in (btf.KIND_INT,) + _ENUMS else 0
        if not byte_sz:
            raise ParseError("bitfield of non-integer type [%d]" % ftid)
        byte_off = bit_off // 8 // byte_sz * byte_sz
        # grow the load until it covers the whole bitfield
        while bit_off + bit_sz - byte_off * 8 > byte_sz * 8:
            if byte_sz >= 8:
                raise ParseError("bitfield cannot be read with a 64-bit load")
            byte_sz *= 2
            byte_off = bit_off // 8 // byte_sz * byte_sz
    else:
        byte_sz = b.size_of(ftid)
        byte_off = bit_off // 8
        bit_sz = byte_sz * 8
    if local:
        # the compiler may lay bitfields out differently; only some values are certain
        res.validate = not m.bitfield_size or relo_kind in (FIELD_SIGNED, FIELD_RSHIFT_U64)
    if relo_kind == FIELD_BYTE_OFFSET:
        return byte_off, (0 if m.bitfield_size else byte_sz), (0 if m.bitfield_size else ftid)
    if relo_kind == FIELD_BYTE_SIZE:
        return byte_sz, 0, 0
    if relo_kind == FIELD_SIGNED:
        signed = (mt.kind in _ENUMS and mt.signed) or \
            (mt.kind == btf.KIND_INT and bool(mt.encoding & btf.INT_SIGNED))
        return int(signed), 0, 0
    if relo_kind == FIELD_LSHIFT_U64:
        return 64 - (bit_off + bit_sz - byte_off * 8), 0, 0  # little-endian BPF
    return 64 - bit_sz, 0, 0  # FIELD_RSHIFT_U64


def _type_value(relo_kind, s):
    if s is None:
        return 0  # type-based relocations read 0 when the target has no such type
    if relo_kind in (TYPE_ID_LOCAL, TYPE_ID_TARGET):
        return s.root_id
    if relo_kind in (TYPE_EXISTS, TYPE_MATCHES):
        return 1
    return s.btf.size_of(s.root_id)  # TYPE_SIZE


def _enum_value(relo_kind, s):
    if relo_kind == ENUMVAL_EXISTS:
        return int(s is not None)
    if s is None:
        raise _Poisoned("enum value not found in target kernel")
    t = s.btf.type(s.acc[0].type_id)
    v = t.values[s.acc[0].idx][1]
    if t.kind == btf.KIND_ENUM:  # libbpf reads btf_enum.val as __s32
        v &= 0xFFFFFFFF
        v = v - (1 << 32) if v & 0x80000000 else v
    return v & _MASK64


def _calc(relo_kind, ls, ts):
    """libbpf's bpf_core_calc_relo: local (orig) and target (new) values."""
    res = _Res()
    try:
        if _is_field(relo_kind):
            res.orig, res.orig_sz, res.orig_tid = _field_value(relo_kind, ls, res, True)
            res.new, res.new_sz, res.new_tid = _field_value(relo_kind, ts, res, False)
            if res.orig_sz != res.new_sz:
                ot, nt = ls.btf.type(res.orig_tid), ts.btf.type(res.new_tid)
                both_ptr = ot.kind == nt.kind == btf.KIND_PTR
                both_uint = ot.kind == nt.kind == btf.KIND_INT and \
                    btf.INT_SIGNED not in (ot.encoding, nt.encoding)
                # only pointers and unsigned ints may be loaded with another size
                res.bad_memsz = not (both_ptr or both_uint)
        elif _is_type(relo_kind):
            res.orig = _type_value(relo_kind, ls)
            res.new = _type_value(relo_kind, ts)
            # linking may renumber the local id embedded in the insn: don't check it
            res.validate = relo_kind != TYPE_ID_TARGET
        else:
            res.orig = _enum_value(relo_kind, ls)
            res.new = _enum_value(relo_kind, ts)
    except _Poisoned as e:
        res.poison, res.why = True, str(e)
    return res


def _resolve(relo, local, target, cands_cache):
    ls = _parse_spec(local, relo.type_id, relo.access_str, relo.kind)
    if relo.kind == TYPE_ID_LOCAL:
        res = _Res()
        res.orig = res.new = relo.type_id
        res.validate = False  # linking may renumber the id embedded in the insn
        return ls, res
    cands = cands_cache.get(relo.type_id)
    if cands is None:
        lt = local.type(relo.type_id)
        if not lt.name:
            raise ParseError("cannot relocate anonymous type [%d]" % relo.type_id)
        cands = [i for i in target.candidates(lt.name) if _kind_compat(target.type(i), lt)]
        cands_cache[relo.type_id] = cands
    res, matched, first = None, [], None
    for cid in cands:
        ts = _match_spec(ls, target, cid)
        if ts is None:
            continue
        r = _calc(relo.kind, ls, ts)
        if res is None:
            res, first = r, ts
        elif ts.bit_offset != first.bit_offset:
            raise ParseError("field offset ambiguity: %d != %d (target types [%d] and [%d])"
                             % (ts.bit_offset // 8, first.bit_offset // 8, first.root_id, cid))
        elif (r.poison, r.new) != (res.poison, res.new):
            raise ParseError("relocation decision ambiguity: %d != %d (target types [%d] and [%d])"
                             % (r.new, res.new, first.root_id, cid))
        matched.append(cid)
    if matched:
        # later relocations of this type only consider candidates that fit (as libbpf)
        cands_cache[relo.type_id] = matched
    else:
        res = _calc(relo.kind, ls, None)
    return ls, res


# --- patching -------------------------------------------------------------------

def _poison(insns, idx):
    _INSN.pack_into(insns, idx * 8, _CALL, 0, 0, POISON_IMM)


def _patch(insns, idx, res):
    o = idx * 8
    code, regs, off, imm = _INSN.unpack_from(insns, o)
    cls = code & 7
    ld64 = code == _LD_IMM64
    if res.poison:
        if ld64 and o + 16 <= len(insns):
            _poison(insns, idx + 1)  # so the verifier does not complain about opcode 00
        _poison(insns, idx)
        return res.why
    orig, new = res.orig & _MASK64, res.new & _MASK64
    if cls in (_ALU, _ALU64):
        if code & 0x08:
            raise ParseError("insn #%d: ALU relocation needs an immediate operand" % idx)
        if res.validate and imm & _MASK64 != orig:
            raise ParseError("insn #%d: unexpected ALU imm %d, expected %d" % (idx, imm, orig))
        new32 = new & 0xFFFFFFFF
        _INSN.pack_into(insns, o, code, regs, off, new32 - (1 << 32) if new32 >> 31 else new32)
    elif cls in (_LDX, _ST, _STX):
        if res.validate and off & _MASK64 != orig:
            raise ParseError("insn #%d: unexpected memory offset %d, expected %d" % (idx, off, orig))
        if new > 0x7FFF:
            raise ParseError("insn #%d: offset %d does not fit" % (idx, new))
        if res.bad_memsz:
            _poison(insns, idx)
            return "field size mismatch: access pointers, unsigned ints or fields of matching size"
        if res.new_sz != res.orig_sz:
            if _SIZES[code & 0x18] != res.orig_sz:
                raise ParseError("insn #%d: unexpected memory size %d, expected %d"
                                 % (idx, _SIZES[code & 0x18], res.orig_sz))
            if res.new_sz not in _SIZE_CODES:
                raise ParseError("insn #%d: invalid new memory size %d" % (idx, res.new_sz))
            code = (code & ~0x18) | _SIZE_CODES[res.new_sz]
        _INSN.pack_into(insns, o, code, regs, new, imm)
    elif ld64:
        if o + 16 > len(insns):
            raise ParseError("insn #%d: truncated ld_imm64" % idx)
        code2, regs2, off2, imm2 = _INSN.unpack_from(insns, o + 8)
        if regs >> 4 or off or code2 or regs2 or off2:
            raise ParseError("insn #%d: ld_imm64 has unexpected form" % idx)
        cur = (imm & 0xFFFFFFFF) | (imm2 & 0xFFFFFFFF) << 32
        if res.validate and cur != orig:
            raise ParseError("insn #%d: unexpected ld_imm64 value %d, expected %d" % (idx, cur, orig))
        lo, hi = new & 0xFFFFFFFF, new >> 32
        _INSN.pack_into(insns, o, code, regs, off, lo - (1 << 32) if lo >> 31 else lo)
        _INSN.pack_into(insns, o + 8, 0, 0, 0, hi - (1 << 32) if hi >> 31 else hi)
    else:
        raise ParseError("insn #%d: cannot relocate opcode 0x%02x" % (idx, code))
    return None


def relocate(insns, relos, local, target):
    """Apply CO-RE relocations to `insns` (a bytearray) in place; returns Poisons.

    relo.insn_off is a byte offset from the start of `insns`; local is the
    object's BTF, target the kernel's.
    """
    poisons = []
    cands_cache = {}
    for n, relo in enumerate(relos):
        ctx = "CO-RE relocation #%d (%s, type [%d], %r)" % (
            n, KIND_NAMES[relo.kind] if 0 <= relo.kind < len(KIND_NAMES) else relo.kind,
            relo.type_id, relo.access_str)
        try:
            if not 0 <= relo.kind < len(KIND_NAMES):
                raise ParseError("unknown relocation kind %d" % relo.kind)
            if relo.insn_off % 8 or not 0 <= relo.insn_off <= len(insns) - 8:
                raise ParseError("instruction offset %d out of range or misaligned"
                                 % relo.insn_off)
            ls, res = _resolve(relo, local, target, cands_cache)
            why = _patch(insns, relo.insn_off // 8, res)
        except ParseError as e:
            raise e.add_context(ctx)
        if why:
            poisons.append(Poison(relo.insn_off // 8, "%s: %s" % (_describe(ls), why)))
    return poisons
