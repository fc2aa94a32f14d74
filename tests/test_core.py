"""CO-RE relocation (no root needed): against the running kernel's BTF, and on
small hand-built specs for the corner cases."""

import os
import struct

import pytest

from hermes.bpf import btf, core
from hermes.bpf.btf_ext import CoreRelo
from hermes.bpf.errors import ParseError

from test_btf import VMLINUX, elf_sections, needs_vmlinux

INSN = struct.Struct("<BBhi")


def core_relos(path):
    """{section: [CoreRelo]} read straight from .BTF.ext (independent of the loader)."""
    secs = elf_sections(path)
    raw, ext = secs[".BTF"][0], secs[".BTF.ext"][0]
    _, _, _, hl, _, _, so, sl = struct.unpack_from("<HBBIIIII", raw)
    strs = raw[hl + so:hl + so + sl]

    def s(o):
        return strs[o:strs.index(b"\0", o)].decode()

    hdr_len, = struct.unpack_from("<I", ext, 4)
    off, length = struct.unpack_from("<II", ext, 24)
    body = ext[hdr_len + off:hdr_len + off + length]
    rec, = struct.unpack_from("<I", body)
    out, p = {}, 4
    while p < len(body):
        name, n = struct.unpack_from("<II", body, p)
        p += 8
        recs = []
        for i in range(n):
            insn_off, tid, acc, kind = struct.unpack_from("<IIII", body, p + i * rec)
            recs.append(CoreRelo(insn_off, tid, s(acc), kind))
        out[s(name)] = recs
        p += n * rec
    return out


def member(spec, sid, name):
    """(bit offset, Member) of `name` in struct sid, searching anonymous members."""
    for m in spec.types[sid].members:
        if m.name == name:
            return m.offset, m
        if not m.name:
            inner = spec.resolve(m.type)
            if spec.types[inner].kind in (btf.KIND_STRUCT, btf.KIND_UNION):
                found = member(spec, inner, name)
                if found:
                    return m.offset + found[0], found[1]
    return None


@pytest.fixture(scope="module")
def kernel():
    if not os.path.exists(VMLINUX):
        pytest.skip("kernel has no BTF")
    return btf.load_kernel_spec()


@pytest.fixture(scope="module")
def full_kernel():
    """Expectations come from a full (non-lazy) parse: a different code path."""
    if not os.path.exists(VMLINUX):
        pytest.skip("kernel has no BTF")
    return btf.Spec.parse(open(VMLINUX, "rb").read())


@needs_vmlinux
def test_core_basic_against_kernel(test_obj, kernel, full_kernel):
    path = test_obj("core_basic")
    secs = elf_sections(path)
    local = btf.Spec.parse(secs[".BTF"][0])
    relos = core_relos(path)["socket"]
    insns = bytearray(secs["socket"][0])
    before = bytes(insns)
    poisons = core.relocate(insns, relos, local, kernel)

    k = full_kernel
    [skb] = k.find("sk_buff", btf.KIND_STRUCT)
    off = {n: member(k, skb, n) for n in ("len", "data_len", "mac_len", "pkt_type")}
    [maptype] = [i for i in k.find("bpf_map_type") if k.types[i].kind == btf.KIND_ENUM]
    sockarray = dict(k.types[maptype].values)["BPF_MAP_TYPE_REUSEPORT_SOCKARRAY"]
    pkt_bit, pkt = off["pkt_type"]
    assert pkt.bitfield_size == 3 and k.size_of(pkt.type) == 1 and pkt_bit % 8 + 3 <= 8

    def want(r):
        t = local.types[r.type_id]
        field = None
        if r.kind <= core.FIELD_RSHIFT_U64:
            field = t.members[int(r.access_str.split(":")[1])].name
        if t.name == "sk_buff___local":
            if r.kind == core.FIELD_BYTE_OFFSET:
                return off[field][0] // 8   # pkt_type fits one byte: same formula
            if r.kind == core.FIELD_BYTE_SIZE:
                return 1 if field == "pkt_type" else k.size_of(off[field][1].type)
            if r.kind == core.FIELD_LSHIFT_U64:
                return 64 - (pkt_bit % 8 + 3)
            if r.kind == core.FIELD_RSHIFT_U64:
                return 61
            if r.kind == core.FIELD_SIGNED:
                return 0
            if r.kind in (core.FIELD_EXISTS, core.TYPE_EXISTS):
                return 1
            if r.kind == core.TYPE_SIZE:
                return k.types[skb].size
        if t.name == "sk_buff___missing" and r.kind == core.FIELD_EXISTS:
            return 0
        if t.name == "hermes_no_such_type":
            return 0
        if t.name == "bpf_map_type___local":
            return sockarray if r.kind == core.ENUMVAL_VALUE else 0
        return "poison"

    kinds = set()
    for r in relos:
        i = r.insn_off
        code, _, o, imm = INSN.unpack_from(insns, i)
        w = want(r)
        kinds.add(r.kind)
        if w == "poison":
            assert (code, imm) == (0x85, core.POISON_IMM)
            assert poisons == [core.Poison(i // 8, "struct sk_buff___missing.hermes_no_such_field"
                                           " (0:0): field not found in target kernel")]
        elif code == 0x18:
            hi = INSN.unpack_from(insns, i + 8)[3]
            assert (imm & 0xFFFFFFFF) | hi << 32 == w, r
        elif code & 7 in (4, 7):
            assert imm == w, r
        else:
            assert o == w, r
    assert kinds >= {core.FIELD_BYTE_OFFSET, core.FIELD_BYTE_SIZE, core.FIELD_EXISTS,
                     core.FIELD_SIGNED, core.FIELD_LSHIFT_U64, core.FIELD_RSHIFT_U64,
                     core.TYPE_EXISTS, core.TYPE_SIZE, core.ENUMVAL_VALUE, core.ENUMVAL_EXISTS}
    # only relocated instructions changed
    touched = {r.insn_off // 8 for r in relos} | {p.insn_idx for p in poisons}
    for n in range(len(insns) // 8):
        if n not in touched:
            assert insns[n * 8:n * 8 + 8] == before[n * 8:n * 8 + 8]
    # the local layout really differs, so the test shows relocation happened
    assert off["len"][0] // 8 != 8


# --- hand-built specs ---------------------------------------------------------------

def ins(code, dst=0, src=0, off=0, imm=0):
    return INSN.pack(code, src << 4 | dst, off, imm)


LDX_W, LDX_DW, MOV_K, LD_IMM64 = 0x61, 0x79, 0xB7, 0x18


def spec_with(*types):
    s = btf.Spec()
    for t in types:
        s.add(t)
    return s


U32 = btf.Int("unsigned int", 4, 0, 0, 32)
U64 = btf.Int("unsigned long", 8, 0, 0, 64)
S32 = btf.Int("int", 4, btf.INT_SIGNED, 0, 32)
S64 = btf.Int("long", 8, btf.INT_SIGNED, 0, 64)


def local_foo():
    # [1] u32 [2] s32 [3] struct foo___mine { u32 b; s32 c; u32 a; }
    return spec_with(U32, S32, btf.Struct("foo___mine", 12, [
        btf.Member("b", 1, 0, 0), btf.Member("c", 2, 32, 0), btf.Member("a", 1, 64, 0)]))


def target_foo(name="foo", a_type=1, shift=0):
    # [1] u32 [2] u64 [3] s64 [4] anon { u32 pad; T a; } [5] struct foo { u64 x; anon; u32 b; s64 c }
    return spec_with(U32, U64, S64,
                     btf.Struct("", 16, [btf.Member("pad", 1, 0, 0),
                                         btf.Member("a", a_type, 64, 0)]),
                     btf.Struct(name, 48, [btf.Member("x", 2, 0, 0),
                                           btf.Member("", 4, 64 + shift, 0),
                                           btf.Member("b", 1, 192 + shift, 0),
                                           btf.Member("c", 3, 256, 0)]))


def test_flavoured_struct_through_anonymous_member():
    insns = bytearray(ins(LDX_W, 0, 1, 8) + ins(MOV_K, 0, imm=0) + ins(LDX_W, 0, 1, 0))
    relos = [CoreRelo(0, 3, "0:2", core.FIELD_BYTE_OFFSET),
             CoreRelo(8, 3, "0:0", core.FIELD_BYTE_OFFSET),
             CoreRelo(16, 3, "0:0", core.FIELD_BYTE_OFFSET)]
    assert core.relocate(insns, relos, local_foo(), target_foo()) == []
    assert INSN.unpack_from(insns, 0) == (LDX_W, 0x10, 16, 0)   # a: 8 + 8 bytes
    assert INSN.unpack_from(insns, 8)[3] == 24                  # b
    assert INSN.unpack_from(insns, 16)[2] == 24


def test_load_size_adjusted_for_unsigned_and_poisoned_for_signed():
    insns = bytearray(ins(LDX_W, 0, 1, 8) + ins(LDX_W, 0, 1, 4))
    relos = [CoreRelo(0, 3, "0:2", core.FIELD_BYTE_OFFSET),   # u32 -> u64: widen the load
             CoreRelo(8, 3, "0:1", core.FIELD_BYTE_OFFSET)]   # s32 -> s64: unsafe
    poisons = core.relocate(insns, relos, local_foo(), target_foo(a_type=2))
    assert INSN.unpack_from(insns, 0) == (LDX_DW, 0x10, 16, 0)
    assert INSN.unpack_from(insns, 8) == (0x85, 0, 0, core.POISON_IMM)
    assert [p.insn_idx for p in poisons] == [1]
    assert "struct foo___mine.c (0:1)" in poisons[0].reason


def test_candidates_must_agree():
    tgt = target_foo()
    tgt.add(btf.Struct("foo___other", 48, [btf.Member("a", 1, 0, 0)]))
    insns = bytearray(ins(MOV_K, imm=8))
    with pytest.raises(ParseError, match="ambiguity"):
        core.relocate(insns, [CoreRelo(0, 3, "0:2", core.FIELD_BYTE_OFFSET)], local_foo(), tgt)
    # a candidate the access does not fit is skipped, not a conflict
    tgt = target_foo()
    tgt.add(btf.Struct("foo___other", 4, [btf.Member("zzz", 1, 0, 0)]))
    insns = bytearray(ins(MOV_K, imm=8))
    core.relocate(insns, [CoreRelo(0, 3, "0:2", core.FIELD_BYTE_OFFSET)], local_foo(), tgt)
    assert INSN.unpack_from(insns, 0)[3] == 16


def test_missing_things():
    local = local_foo()
    local.add(btf.Enum("e___l", 4, False, [("E_ONE___l", 1), ("E_GONE___l", 2)]))  # [4]
    tgt = target_foo()
    tgt.add(btf.Enum("e", 4, False, [("E_ONE", 11)]))
    insns = bytearray(ins(MOV_K, imm=1) + ins(MOV_K, imm=1) + ins(LD_IMM64, imm=2) + ins(0) +
                      ins(LD_IMM64, imm=1) + ins(0) + ins(MOV_K, imm=4) + ins(MOV_K, imm=12))
    relos = [CoreRelo(0, 4, "1", core.ENUMVAL_EXISTS), CoreRelo(8, 4, "0", core.ENUMVAL_EXISTS),
             CoreRelo(16, 4, "1", core.ENUMVAL_VALUE), CoreRelo(32, 4, "0", core.ENUMVAL_VALUE),
             CoreRelo(48, 3, "0:1", core.FIELD_BYTE_OFFSET), CoreRelo(56, 3, "0", core.TYPE_SIZE)]
    tgt.types[5].members[3].name = "renamed"
    poisons = core.relocate(insns, relos, local, tgt)
    imms = [INSN.unpack_from(insns, o)[3] for o in range(0, len(insns), 8)]
    assert imms[:2] == [0, 1]
    assert INSN.unpack_from(insns, 16)[0] == INSN.unpack_from(insns, 24)[0] == 0x85  # both halves
    assert imms[2] == imms[3] == core.POISON_IMM
    assert imms[4:6] == [11, 0]
    assert imms[6] == core.POISON_IMM and imms[7] == 48
    assert [p.insn_idx for p in poisons] == [2, 6]
    assert poisons[0].reason == "enum e___l::E_GONE___l (1): enum value not found in target kernel"


def test_type_relos():
    local = local_foo()
    local.add(btf.Ptr("", 3))                                           # [4]
    local.add(btf.Typedef("foo_t", 4))                                  # [5]
    tgt = target_foo()
    tgt.add(btf.Ptr("", 5))                                             # [6]
    tgt.add(btf.Typedef("foo_t", 6))                                    # [7]
    insns = bytearray(b"".join(ins(LD_IMM64, imm=i) + ins(0) for i in (5, 5)) +
                      ins(MOV_K, imm=1) + ins(MOV_K, imm=8) + ins(MOV_K, imm=1))
    relos = [CoreRelo(0, 5, "0", core.TYPE_ID_LOCAL), CoreRelo(16, 5, "0", core.TYPE_ID_TARGET),
             CoreRelo(32, 5, "0", core.TYPE_EXISTS), CoreRelo(40, 5, "0", core.TYPE_SIZE),
             CoreRelo(48, 5, "0", core.TYPE_MATCHES)]
    assert core.relocate(insns, relos, local, tgt) == []
    imms = [INSN.unpack_from(insns, o)[3] for o in range(0, len(insns), 8)]
    assert imms == [5, 0, 7, 0, 1, 8, 1]


def test_type_matches_is_stricter_than_exists():
    local = spec_with(U32, btf.Struct("bar___l", 4, [btf.Member("only_here", 1, 0, 0)]))
    tgt = spec_with(U32, btf.Struct("bar", 4, [btf.Member("other", 1, 0, 0)]))
    insns = bytearray(ins(MOV_K, imm=1) + ins(MOV_K, imm=1))
    core.relocate(insns, [CoreRelo(0, 2, "0", core.TYPE_EXISTS),
                          CoreRelo(8, 2, "0", core.TYPE_MATCHES)], local, tgt)
    assert [INSN.unpack_from(insns, o)[3] for o in (0, 8)] == [1, 0]


def test_array_element_and_bitfield():
    # local: struct arr___l { u32 v[4]; u8 bf:3 @ bit 128 }
    u8 = btf.Int("unsigned char", 1, 0, 0, 8)
    local = spec_with(U32, u8, btf.Array("", 1, 1, 4),
                      btf.Struct("arr___l", 20, [btf.Member("v", 3, 0, 0),
                                                 btf.Member("bf", 2, 128, 3)]))
    tgt = spec_with(U32, u8, btf.Array("", 1, 1, 8),
                    btf.Struct("arr", 40, [btf.Member("pad", 1, 0, 0), btf.Member("v", 3, 32, 0),
                                           btf.Member("bf", 2, 294, 3)]))
    insns = bytearray(ins(MOV_K, imm=8) + ins(MOV_K, imm=16) + ins(MOV_K, imm=1) +
                      ins(MOV_K, imm=61) + ins(MOV_K, imm=61))
    relos = [CoreRelo(0, 4, "0:0:2", core.FIELD_BYTE_OFFSET),
             CoreRelo(8, 4, "0:1", core.FIELD_BYTE_OFFSET),
             CoreRelo(16, 4, "0:1", core.FIELD_BYTE_SIZE),
             CoreRelo(24, 4, "0:1", core.FIELD_LSHIFT_U64),
             CoreRelo(32, 4, "0:1", core.FIELD_RSHIFT_U64)]
    assert core.relocate(insns, relos, local, tgt) == []
    # v[2] at 4 + 8; bf at bits 294..296 crosses a byte: a 2-byte load at 36
    assert [INSN.unpack_from(insns, o)[3] for o in range(0, 40, 8)] == [12, 36, 2, 64 - 9, 61]


def test_unchecked_value_mismatch_is_an_error():
    insns = bytearray(ins(MOV_K, imm=99))
    with pytest.raises(ParseError, match="unexpected ALU imm 99"):
        core.relocate(insns, [CoreRelo(0, 3, "0:2", core.FIELD_BYTE_OFFSET)],
                      local_foo(), target_foo())


@pytest.mark.parametrize("relo,msg", [
    (CoreRelo(0, 99, "0:0", core.FIELD_BYTE_OFFSET), "no type"),
    (CoreRelo(0, 3, "0:x", core.FIELD_BYTE_OFFSET), "access string"),
    (CoreRelo(0, 3, "", core.FIELD_BYTE_OFFSET), "access string"),
    (CoreRelo(0, 3, "0:7", core.FIELD_BYTE_OFFSET), "out of range"),
    (CoreRelo(0, 3, "0:0:1", core.FIELD_BYTE_OFFSET), "not a struct"),
    (CoreRelo(0, 3, "1", core.TYPE_EXISTS), "needs access string"),
    (CoreRelo(0, 1, "0", core.ENUMVAL_VALUE), "enum value access"),
    (CoreRelo(4, 3, "0:0", core.FIELD_BYTE_OFFSET), "misaligned"),
    (CoreRelo(64, 3, "0:0", core.FIELD_BYTE_OFFSET), "out of range"),
    (CoreRelo(0, 3, "0:0", 42), "unknown relocation kind"),
    (CoreRelo(8, 3, "0:0", core.FIELD_BYTE_OFFSET), "cannot relocate opcode"),
])
def test_malformed_relos(relo, msg):
    insns = bytearray(ins(MOV_K, imm=0) + ins(0x95))
    with pytest.raises(ParseError, match=msg) as e:
        core.relocate(insns, [relo], local_foo(), target_foo())
    assert "CO-RE relocation #0" in str(e.value)


def test_candidates_looked_up_once_per_type():
    calls = []

    class Counting(btf.Spec):
        def candidates(self, name):
            calls.append(name)
            return super().candidates(name)

    tgt = Counting(target_foo().types)
    insns = bytearray(ins(MOV_K, imm=8) * 2 + ins(MOV_K, imm=0) * 2)
    relos = [CoreRelo(o, 3, acc, core.FIELD_BYTE_OFFSET)
             for o, acc in ((0, "0:2"), (8, "0:2"), (16, "0:0"), (24, "0:0"))]
    core.relocate(insns, relos, local_foo(), tgt)
    assert calls == ["foo___mine"]


@needs_vmlinux
def test_mutated_relos_raise_only_parse_error(test_obj, kernel):
    import random
    path = test_obj("core_basic")
    secs = elf_sections(path)
    local = btf.Spec.parse(secs[".BTF"][0])
    relos = core_relos(path)["socket"]
    good = bytes(secs["socket"][0])
    rng = random.Random(7)
    outcomes = {"ok": 0, "error": 0}
    for _ in range(400):
        r = rng.choice(relos)
        what = rng.randrange(4)
        if what == 0:
            r = r._replace(type_id=rng.randrange(len(local.types) + 3))
        elif what == 1:
            r = r._replace(access_str=":".join(str(rng.randrange(40))
                                               for _ in range(rng.randint(1, 4))))
        elif what == 2:
            r = r._replace(kind=rng.randrange(14))
        else:
            r = r._replace(insn_off=rng.randrange(len(good) + 16))
        try:
            core.relocate(bytearray(good), [r], local, kernel)
            outcomes["ok"] += 1
        except ParseError:
            outcomes["error"] += 1
    assert outcomes["ok"] > 20 and outcomes["error"] > 20, outcomes


def test_type_ids_are_not_validated_but_fields_are():
    # ids embedded by clang may be renumbered by linking, so libbpf does not check them
    insns = bytearray(ins(LD_IMM64, imm=999) + ins(0) + ins(LD_IMM64, imm=999) + ins(0))
    core.relocate(insns, [CoreRelo(0, 3, "0", core.TYPE_ID_TARGET),
                          CoreRelo(16, 3, "0", core.TYPE_ID_LOCAL)], local_foo(), target_foo())
    assert [INSN.unpack_from(insns, o)[3] for o in (0, 16)] == [5, 3]


def test_type_matches_needs_target_names_for_named_locals():
    local = spec_with(U32, btf.Struct("baz___l", 4, [btf.Member("a", 1, 0, 0)]))
    anon_member = spec_with(U32, btf.Struct("baz", 4, [btf.Member("", 1, 0, 0)]))
    same = spec_with(U32, btf.Struct("baz", 8, [btf.Member("z", 1, 0, 0), btf.Member("a", 1, 32, 0)]))
    for tgt, want in ((anon_member, 0), (same, 1)):
        insns = bytearray(ins(MOV_K, imm=1))
        core.relocate(insns, [CoreRelo(0, 2, "0", core.TYPE_MATCHES)], local, tgt)
        assert INSN.unpack_from(insns, 0)[3] == want
