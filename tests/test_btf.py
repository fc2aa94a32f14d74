"""BTF parsing, marshalling, fix-ups and sanitizing (no root needed)."""

import glob
import os
import random
import re
import shutil
import struct
import subprocess

import pytest

from hermes.bpf import btf
from hermes.bpf.errors import ParseError

from conftest import BUILD

VMLINUX = "/sys/kernel/btf/vmlinux"
needs_vmlinux = pytest.mark.skipif(not os.path.exists(VMLINUX), reason="kernel has no BTF")


# --- a minimal ELF reader, independent of the loader's -----------------------------

def elf_sections(path):
    """{name: (bytes, sh_type, index)} of an ELF64 little-endian file."""
    raw = open(path, "rb").read()
    shoff, = struct.unpack_from("<Q", raw, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", raw, 0x3A)
    hdrs = [struct.unpack_from("<IIQQQQIIQQ", raw, shoff + i * shentsize) for i in range(shnum)]
    strtab = hdrs[shstrndx]
    names = raw[strtab[4]:strtab[4] + strtab[5]]
    out = {}
    for i, h in enumerate(hdrs):
        name = names[h[0]:names.index(b"\0", h[0])].decode()
        data = b"" if h[1] == 8 else raw[h[4]:h[4] + h[5]]  # SHT_NOBITS
        out[name] = (data, h[1], i, h[5])
    return out


def btf_of(path):
    return elf_sections(path)[".BTF"][0]


def all_objects():
    objs = sorted(glob.glob(os.path.join(BUILD, "tests", "*.bpf.o")) +
                  glob.glob(os.path.join(BUILD, "*.bpf.o")))
    return [o for o in objs if ".BTF" in elf_sections(o)]


@pytest.fixture
def objects(test_obj):
    test_obj("core_basic")
    test_obj("globals")
    objs = all_objects()
    assert len(objs) >= 2
    return objs


def bpftool_raw(path):
    """[(id, KIND, name)] from `bpftool btf dump file PATH format raw`."""
    r = subprocess.run(["bpftool", "btf", "dump", "file", path, "format", "raw"],
                       capture_output=True, text=True, check=True)
    return [(int(m[1]), m[2], m[3]) for m in
            re.finditer(r"^\[(\d+)\] (\w+) '([^']*)'", r.stdout, re.M)]


# --- parse / marshal -------------------------------------------------------------

def test_parse_matches_bpftool_and_roundtrips(objects):
    for path in objects:
        spec = btf.Spec.parse(btf_of(path))
        again = btf.Spec.parse(spec.marshal())
        assert again == spec, path
        assert again.marshal() == spec.marshal()
        if shutil.which("bpftool"):
            want = bpftool_raw(path)
            got = [(i, btf.kind_name(t.kind), t.name or "(anon)")
                   for i, t in enumerate(spec.types) if i]
            assert got == want, path


def test_core_basic_types(test_obj):
    spec = btf.Spec.parse(btf_of(test_obj("core_basic")))
    [sid] = spec.find("sk_buff___local", btf.KIND_STRUCT)
    t = spec.types[sid]
    assert t.size == 16
    assert [(m.name, m.offset, m.bitfield_size) for m in t.members] == [
        ("data_len", 0, 0), ("pkt_type", 32, 3), ("len", 64, 0), ("mac_len", 96, 0)]
    assert spec.size_of(t.members[3].type) == 2
    assert spec.types[spec.resolve(t.members[0].type)].name == "unsigned int"
    assert spec.candidates("sk_buff___other") == sorted(
        spec.find("sk_buff___local") + spec.find("sk_buff___missing"))
    [eid] = spec.find("bpf_map_type___local", btf.KIND_ENUM)
    assert spec.types[eid].values == [("BPF_MAP_TYPE_REUSEPORT_SOCKARRAY___local", 1),
                                      ("HERMES_NO_SUCH_MAP_TYPE___local", 2)]
    [fid] = spec.find("core_basic", btf.KIND_FUNC)
    assert spec.types[fid].linkage == btf.LINKAGE_GLOBAL
    assert spec.types[spec.types[fid].type].kind == btf.KIND_FUNC_PROTO


def test_string_at_reads_the_raw_table(test_obj):
    raw = btf_of(test_obj("core_basic"))
    spec = btf.Spec.parse(raw)
    _, _, _, hl, _, _, so, sl = struct.unpack_from("<HBBIIIII", raw)
    strs = raw[hl + so:hl + so + sl]
    off = strs.index(b"\0sk_buff___local\0") + 1
    assert spec.string_at(off) == "sk_buff___local"
    assert spec.string_at(0) == ""
    with pytest.raises(ParseError, match="string offset"):
        spec.string_at(sl)
    with pytest.raises(ParseError):
        btf.Spec().string_at(0)
    # marshal keeps the original strings where they were (line_info points into them)
    out = spec.copy()
    out.types[1].name = "brand_new_name"
    again = btf.Spec.parse(out.marshal())
    assert again.string_at(off) == "sk_buff___local"
    assert again.types[1].name == "brand_new_name"


def test_essential_name():
    assert btf.essential_name("task_struct___v2") == "task_struct"
    assert btf.essential_name("a___b___c") == "a___b"
    assert btf.essential_name("__u32") == "__u32"
    assert btf.essential_name("x____y") == "x____y"   # four underscores: not a flavour
    assert btf.essential_name("___x") == "___x"


@needs_vmlinux
def test_vmlinux_full_parse_roundtrip():
    data = open(VMLINUX, "rb").read()
    spec = btf.Spec.parse(data)
    assert len(spec.types) > 1000
    assert btf.Spec.parse(spec.marshal()) == spec


# --- the kernel spec and its cache -----------------------------------------------

@needs_vmlinux
def test_kernel_spec_lazy_matches_full_parse(tmp_path, monkeypatch):
    monkeypatch.setenv("HERMES_CACHE_DIR", str(tmp_path))
    full = btf.Spec.parse(open(VMLINUX, "rb").read())
    cold = btf.load_kernel_spec()
    assert os.listdir(tmp_path), "the index was not cached"
    warm = btf.load_kernel_spec()
    for k in (cold, warm):
        assert len(k.types) == len(full.types)
        for i in range(1, len(full.types), 997):
            assert k.types[i] == full.types[i]
        for name in ("sk_buff", "task_struct", "bpf_map_type", "__u32"):
            assert k.find(name) == full.find(name) != []
        assert k.find("sk_buff", btf.KIND_STRUCT) == full.find("sk_buff", btf.KIND_STRUCT)
        assert k.candidates("sk_buff___mine") == full.candidates("sk_buff")
        sid = k.find("sk_buff", btf.KIND_STRUCT)[0]
        assert k.size_of(sid) == full.size_of(sid)
    assert warm.copy() == full


def _write_fake_vmlinux(path, name):
    s = btf.Spec()
    i = s.add(btf.Int("int", 4, btf.INT_SIGNED, 0, 32))
    s.add(btf.Struct(name, 4, [btf.Member("a", i, 0, 0)]))
    path.write_bytes(s.marshal())


def test_kernel_spec_cache_invalidated_on_change(tmp_path, monkeypatch):
    monkeypatch.setenv("HERMES_CACHE_DIR", str(tmp_path / "cache"))
    f = tmp_path / "vmlinux"
    _write_fake_vmlinux(f, "first")
    assert btf.load_kernel_spec(str(f)).find("first") == [2]
    assert btf.load_kernel_spec(str(f)).find("first") == [2]   # from the cache
    _write_fake_vmlinux(f, "second")                            # same size, new content
    k = btf.load_kernel_spec(str(f))
    assert k.find("first") == [] and k.find("second") == [2]
    # a damaged cache file is ignored, not trusted
    [idx] = os.listdir(tmp_path / "cache")
    (tmp_path / "cache" / idx).write_bytes(b"garbage")
    assert btf.load_kernel_spec(str(f)).find("second") == [2]


def test_kernel_spec_unwritable_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HERMES_CACHE_DIR", "/proc/hermes-no-such-dir")
    f = tmp_path / "vmlinux"
    _write_fake_vmlinux(f, "x")
    assert btf.load_kernel_spec(str(f)).find("x") == [2]
    with pytest.raises(ParseError):
        btf.load_kernel_spec(str(tmp_path / "missing"))
    f.write_bytes(f.read_bytes()[:-3])
    with pytest.raises(ParseError):
        btf.load_kernel_spec(str(f))


# --- resolve / size_of --------------------------------------------------------------

def test_resolve_and_size_of():
    s = btf.Spec()
    i = s.add(btf.Int("int", 4, btf.INT_SIGNED, 0, 32))
    td = s.add(btf.Typedef("myint", i))
    c = s.add(btf.Const("", td))
    arr = s.add(btf.Array("", c, i, 3))
    arr2 = s.add(btf.Array("", arr, i, 2))
    p = s.add(btf.Ptr("", arr2))
    fn = s.add(btf.FuncProto("", i, []))
    assert s.resolve(c) == i
    assert s.size_of(arr2) == 24
    assert s.size_of(p) == 8
    cyc = s.add(btf.Typedef("loop", 0))
    s.types[cyc].type = cyc
    with pytest.raises(ParseError):
        s.resolve(cyc)
    with pytest.raises(ParseError):
        s.size_of(cyc)
    with pytest.raises(ParseError):
        s.size_of(fn)
    with pytest.raises(ParseError):
        s.name_of(1000)
    assert s.find("myint", btf.KIND_TYPEDEF) == [td]
    assert s.find("myint", btf.KIND_INT) == []


# --- fix-ups -----------------------------------------------------------------------

def objdump_symbols(path):
    """{(section, name): value} and {section: size} from llvm-objdump (independent of us)."""
    tool = shutil.which("llvm-objdump") or pytest.skip("llvm-objdump not installed")
    syms = subprocess.run([tool, "-t", path], capture_output=True, text=True, check=True).stdout
    heads = subprocess.run([tool, "-h", path], capture_output=True, text=True, check=True).stdout
    values = {}
    for m in re.finditer(r"^([0-9a-f]{16}) [lgw ]\s+O (\S+)\s+[0-9a-f]+ (\S+)$", syms, re.M):
        values[(m[2], m[3])] = int(m[1], 16)
    sizes = {m[1]: int(m[2], 16) for m in
             re.finditer(r"^\s*\d+ (\S+)\s+([0-9a-f]{8,16}) ", heads, re.M)}
    return values, sizes


def test_fixup_datasecs_matches_elf(test_obj):
    path = test_obj("globals")
    values, sizes = objdump_symbols(path)
    spec = btf.Spec.parse(btf_of(path))
    assert any(t.kind == btf.KIND_DATASEC and t.size == 0 for t in spec.types)
    spec.fixup_datasecs(sizes.get, lambda sec, var: values.get((sec, var)))
    seen = 0
    for t in spec.types:
        if t.kind != btf.KIND_DATASEC:
            continue
        assert t.size == sizes[t.name]
        offs = [v.offset for v in t.vars]
        assert offs == sorted(offs)
        for v in t.vars:
            var = spec.types[v.type]
            assert v.offset == values[(t.name, var.name)], (t.name, var.name)
            assert v.offset + v.size <= t.size
            seen += 1
    assert seen >= 10
    assert btf.Spec.parse(spec.marshal()) == spec


def _datasec_spec():
    s = btf.Spec()
    i = s.add(btf.Int("int", 4, btf.INT_SIGNED, 0, 32))
    a = s.add(btf.Var("a", i, btf.LINKAGE_GLOBAL))
    b = s.add(btf.Var("b", i, btf.LINKAGE_STATIC))
    e = s.add(btf.Var("e", i, btf.LINKAGE_EXTERN))
    s.add(btf.Datasec(".data", 0, [btf.VarSecinfo(a, 0, 4), btf.VarSecinfo(b, 0, 4)]))
    s.add(btf.Datasec(".kconfig", 4, [btf.VarSecinfo(e, 0, 4)]))
    return s


def test_fixup_datasecs_sorts_and_reports_missing():
    s = _datasec_spec()
    offs = {(".data", "a"): 4, (".data", "b"): 0}
    s.fixup_datasecs({".data": 8}.get, lambda sec, var: offs.get((sec, var)))
    ds = s.types[5]
    assert ds.size == 8 and [(v.type, v.offset) for v in ds.vars] == [(3, 0), (2, 4)]
    assert s.types[6].vars[0].offset == 0      # externs are left alone

    s = _datasec_spec()
    with pytest.raises(ParseError, match=r"\.data.*\bb\b"):
        s.fixup_datasecs({".data": 8}.get, lambda sec, var: 4 if var == "a" else None)
    with pytest.raises(ParseError, match="section size"):
        _datasec_spec().fixup_datasecs(lambda n: None, lambda s, v: 0)


# --- sanitize --------------------------------------------------------------------

def every_kind_spec():
    s = btf.Spec()
    i = s.add(btf.Int("int", 4, btf.INT_SIGNED, 0, 32))
    p = s.add(btf.Ptr("", i))
    s.add(btf.Array("", i, i, 4))
    st = s.add(btf.Struct("s", 8, [btf.Member("a", i, 0, 0), btf.Member("b", i, 32, 3)]))
    s.add(btf.Union("u", 4, [btf.Member("a", i, 0, 0)]))
    s.add(btf.Enum("e", 4, True, [("A", -1), ("B", 2)]))
    s.add(btf.Fwd("f", True))
    s.add(btf.Typedef("t", i))
    s.add(btf.Volatile("", i))
    s.add(btf.Const("", i))
    s.add(btf.Restrict("", p))
    proto = s.add(btf.FuncProto("", i, [btf.Param("x", i)]))
    fn = s.add(btf.Func("fn", proto, btf.LINKAGE_GLOBAL))
    var = s.add(btf.Var("v", st, btf.LINKAGE_GLOBAL))
    s.add(btf.Datasec(".data.x", 16, [btf.VarSecinfo(var, 8, 8)]))
    s.add(btf.Float("float", 8))
    s.add(btf.DeclTag("tag", fn, -1))
    s.add(btf.TypeTag("tt", i))
    s.add(btf.Enum64("e64", 8, False, [("BIG", 1 << 40), ("SMALL", 1)]))
    assert {t.kind for t in s.types[1:]} == set(range(1, btf.KIND_MAX + 1))
    return s


def test_every_kind_roundtrips():
    import copy
    s = every_kind_spec()
    dup = copy.deepcopy(s)
    assert dup == s and dup.types[4] is not s.types[4]
    dup.types[4].members[0].name = "changed"
    assert s.types[4].members[0].name == "a"
    assert btf.Spec.parse(s.marshal()) == s
    # big-endian blobs parse and re-marshal big-endian
    be = btf.Spec(s.copy().types, ">")
    raw = be.marshal()
    assert raw[:2] == b"\xeb\x9f" and btf.Spec.parse(raw) == s


@pytest.mark.parametrize("kinds", [
    {btf.KIND_DATASEC}, {btf.KIND_FUNC}, {btf.FEATURE_FUNC_GLOBAL}, {btf.KIND_FLOAT},
    {btf.KIND_DECL_TAG}, {btf.KIND_TYPE_TAG}, {btf.KIND_ENUM64},
    {btf.KIND_DATASEC, btf.KIND_VAR, btf.KIND_FUNC, btf.KIND_FUNC_PROTO, btf.KIND_FLOAT,
     btf.KIND_DECL_TAG, btf.KIND_TYPE_TAG, btf.KIND_ENUM64, btf.FEATURE_FUNC_GLOBAL}])
def test_sanitize(kinds):
    orig = every_kind_spec()
    out = btf.sanitize(orig, kinds)
    assert orig == every_kind_spec(), "sanitize changed its input"
    again = btf.Spec.parse(out.marshal())
    assert again == out
    gone = set(kinds) - {btf.FEATURE_FUNC_GLOBAL}
    if btf.KIND_DATASEC in gone:
        gone.add(btf.KIND_VAR)
    if btf.KIND_FUNC in gone:
        gone.add(btf.KIND_FUNC_PROTO)
    assert not gone & {t.kind for t in out.types}
    assert len(out.types) >= len(orig.types)
    for i, t in enumerate(orig.types):   # untouched kinds keep their ids
        if t.kind not in gone and t.kind not in (btf.KIND_FUNC, btf.KIND_ENUM):
            assert out.types[i] == t
    by_name = {t.name: t for t in out.types if t.name}
    if btf.KIND_DATASEC in kinds:
        ds = out.types[15]
        assert (ds.kind, ds.name, ds.size) == (btf.KIND_STRUCT, "_data_x", 16)
        assert [(m.name, m.type, m.offset) for m in ds.members] == [("v", 14, 64)]
        assert (by_name["v"].kind, by_name["v"].size) == (btf.KIND_INT, 1)
    if btf.KIND_ENUM64 in kinds:
        u = out.types[19]
        assert u.kind == btf.KIND_UNION and u.size == 8
        ph = out.types[len(orig.types)]
        assert ph.name == "enum64_placeholder" and [m.type for m in u.members] == [len(orig.types)] * 2
        assert out.types[6].signed is False
    if btf.KIND_FUNC in kinds:
        assert out.types[13].kind == btf.KIND_TYPEDEF and out.types[12].kind == btf.KIND_ENUM
    elif btf.FEATURE_FUNC_GLOBAL in kinds:
        assert out.types[13].linkage == btf.LINKAGE_STATIC
    if btf.KIND_FLOAT in kinds:
        assert out.types[16] == btf.Struct("", 8, [])
    if btf.KIND_TYPE_TAG in kinds:
        assert out.types[18] == btf.Const("", 1)


@pytest.mark.parametrize("kind", list(range(1, btf.KIND_MAX + 1)) + [btf.FEATURE_FUNC_GLOBAL])
def test_probe_blob(kind):
    spec = btf.Spec.parse(btf.probe_blob(kind))
    if kind == btf.FEATURE_FUNC_GLOBAL:
        assert any(t.kind == btf.KIND_FUNC and t.linkage == btf.LINKAGE_GLOBAL for t in spec.types)
    else:
        assert kind in {t.kind for t in spec.types}


# --- malformed input --------------------------------------------------------------

def _exercise(data):
    """Parse, then use the result the way the loader would; only ParseError may escape."""
    try:
        spec = btf.Spec.parse(data)
        spec.marshal()
        for i in range(len(spec.types)):
            spec.find(spec.name_of(i))
            try:
                spec.size_of(i)
            except ParseError:
                pass
        return True
    except ParseError:
        return False


def test_corrupt_blobs_raise_parse_error(test_obj):
    good = btf_of(test_obj("core_basic"))
    assert _exercise(good)
    bad = 0
    for n in list(range(0, 64)) + list(range(64, len(good), 37)):
        bad += not _exercise(good[:n])
    rng = random.Random(1234)
    for _ in range(600):
        b = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            pos = rng.randrange(len(b))
            if pos < 24 or rng.random() < 0.5:
                b[pos] = rng.randrange(256)
            else:
                b[pos] ^= 1 << rng.randrange(8)
        bad += not _exercise(bytes(b))
    assert bad > 100   # the corruptions were actually detected, not just survived


@pytest.mark.parametrize("blob,msg", [
    (b"", "too short"),
    (b"\x00" * 24, "magic"),
    (struct.pack("<HBBIIIII", 0xEB9F, 2, 0, 24, 0, 0, 0, 1) + b"\0", "version"),
    (struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, 12, 12, 1) + b"\0", "out of bounds"),
    (struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, 12, 12, 1) +
     struct.pack("<III", 0, 2 << 24, 7) + b"\0", "refers to type"),
    (struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, 12, 12, 1) +
     struct.pack("<III", 5, 2 << 24, 0) + b"\0", "string offset"),
    (struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, 12, 12, 1) +
     struct.pack("<III", 0, 25 << 24, 0) + b"\0", "unknown kind"),
    (struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, 12, 12, 1) +
     struct.pack("<III", 0, 4 << 24 | 1, 4) + b"\0", "runs past"),
])
def test_specific_errors(blob, msg):
    with pytest.raises(ParseError, match=msg):
        btf.Spec.parse(blob)
