"""`python3 -m hermes.ctl bpf load|inspect`: the command-line contract.

inspect is checked against what llvm-readelf and `bpftool btf dump file` say
about the same objects; bad input must end in one line on stderr and exit 2
(a verifier rejection: exit 1 and the verifier's words), never a traceback.
"""

import json
import os
import re
import shutil
import struct
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OBJECTS = ["globals", "maps", "subprogs", "sections"]

# libbpf's names (libbpf.c section_defs) as inspect spells them: uapi names
# lower-cased without the BPF_PROG_TYPE_ / BPF_ prefix.
SECTIONS = {
    "socket": ("socket_filter", None),
    "sk_reuseport": ("sk_reuseport", "sk_reuseport_select"),
    "sk_reuseport/migrate": ("sk_reuseport", "sk_reuseport_select_or_migrate"),
    "xdp": ("xdp", "xdp"),
    "tc": ("sched_cls", None),
    "classifier": ("sched_cls", None),
    "tracepoint/syscalls/sys_enter_getppid": ("tracepoint", None),
    "raw_tp/sys_enter": ("raw_tracepoint", None),
    "cgroup_skb/ingress": ("cgroup_skb", "cgroup_inet_ingress"),
    "cgroup_skb/egress": ("cgroup_skb", "cgroup_inet_egress"),
}
MAP_TYPES = {1: "hash", 2: "array", 6: "percpu_array", 9: "lru_hash", 12: "array_of_maps",
             13: "hash_of_maps", 20: "reuseport_sockarray", 27: "ringbuf"}


def hermes(*args):
    return subprocess.run([sys.executable, "-m", "hermes.ctl"] + list(args),
                          capture_output=True, text=True, cwd=ROOT)


def assert_usage_error(r):
    """Exit 2, exactly one line on stderr, no traceback."""
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def tool(*argv):
    r = subprocess.run(list(argv), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout


# -- ground truth from llvm-readelf and bpftool ------------------------------

_SHDR = re.compile(r"^\s*\[\s*(\d+)\]\s+(\S+)\s+\S+\s+[0-9a-f]+\s+([0-9a-f]+)\s+([0-9a-f]+)")
_SYM = re.compile(r"^\s*\d+:\s+([0-9a-f]+)\s+(\S+)\s+(\w+)\s+(\w+)\s+\w+\s+(\S+)\s+(\S+)$")


def readelf(obj):
    """({index: (name, file offset, size)}, [(name, value, size, type, bind, section)])."""
    out = tool("llvm-readelf", "-S", "-s", "--wide", obj)
    sections, symbols = {}, []
    for line in out.splitlines():
        m = _SHDR.match(line)
        if m and int(m.group(1)):
            sections[int(m.group(1))] = (m.group(2), int(m.group(3), 16), int(m.group(4), 16))
            continue
        m = _SYM.match(line)
        if m and m.group(5).isdigit():
            symbols.append((m.group(6), int(m.group(1), 16), int(m.group(2), 0), m.group(3),
                            m.group(4), sections[int(m.group(5))][0]))
    return sections, symbols


def btf_types(obj):
    types = json.loads(tool("bpftool", "btf", "dump", "file", obj, "-j"))["types"]
    return {t["id"]: t for t in types}


def _skip_mods(types, tid):
    while types[tid]["kind"] in ("TYPEDEF", "CONST", "VOLATILE", "RESTRICT", "TYPE_TAG"):
        tid = types[tid]["type_id"]
    return tid


def _size(types, tid):
    t = types[_skip_mods(types, tid)]
    if t["kind"] == "ARRAY":
        return t["nr_elems"] * _size(types, t["type_id"])
    return t["size"]


def btf_maps(types):
    """The .maps definitions, decoded the way libbpf reads them."""
    maps = {}
    for ds in types.values():
        if ds["kind"] != "DATASEC" or ds["name"] != ".maps":
            continue
        for v in ds["vars"]:
            var = types[v["type_id"]]
            d = {"key_size": 0, "value_size": 0, "map_flags": 0, "pinning": 0}
            for mem in types[_skip_mods(types, var["type_id"])]["members"]:
                target = types[types[mem["type_id"]]["type_id"]]     # PTR -> ...
                if mem["name"] in ("key", "value"):
                    d[mem["name"] + "_size"] = _size(types, target["id"])
                elif mem["name"] == "values":
                    pass                                          # inner map template
                else:
                    d[mem["name"]] = target["nr_elems"]               # __uint(): int (*)[N]
            if d["type"] in (12, 13):
                d["value_size"] = 4                               # an inner map's fd
            maps[var["name"]] = d
    return maps


def btf_globals(types):
    """{variable: (section, type name)} for global-linkage variables in data sections."""
    out = {}
    for ds in types.values():
        if ds["kind"] != "DATASEC" or not ds["name"].startswith((".data", ".rodata", ".bss")):
            continue
        for v in ds["vars"]:
            var = types[v["type_id"]]
            if var["linkage"] == "global":
                tid = var["type_id"]
                while types[tid]["kind"] in ("CONST", "VOLATILE"):
                    tid = types[tid]["type_id"]
                signed = types[_skip_mods(types, tid)].get("encoding") == "SIGNED"
                tname = types[tid]["name"] if types[tid]["kind"] != "ARRAY" else ""
                out[var["name"]] = (ds["name"], tname, signed)
    return out


def inspect(obj):
    r = hermes("bpf", "inspect", obj, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


# -- inspect -----------------------------------------------------------------

@pytest.mark.parametrize("name", OBJECTS)
def test_inspect_programs(test_obj, name):
    obj = test_obj(name)
    sections, symbols = readelf(obj)
    has_text = any(s[0] == ".text" and s[2] for s in sections.values())
    want = {s[0]: (s[5], s[2] // 8) for s in symbols
            if s[3] == "FUNC" and s[4] == "GLOBAL" and s[5] != ".text"}
    got = {p["name"]: p for p in inspect(obj)["programs"]}
    assert sorted(got) == sorted(want)
    for pname, (sec, ninsns) in want.items():
        p = got[pname]
        assert p["section"] == sec
        assert (p["type"], p["attach_type"]) == SECTIONS[sec], pname
        if has_text:    # subprograms appended: at least the program's own code
            assert p["insns"] >= ninsns
        else:
            assert p["insns"] == ninsns


def test_inspect_subprograms_are_not_programs(test_obj):
    got = {p["name"] for p in inspect(test_obj("subprogs"))["programs"]}
    assert got == {"sub_socket", "sub_tc"}


@pytest.mark.parametrize("name", OBJECTS)
def test_inspect_maps(test_obj, name):
    obj = test_obj(name)
    want = btf_maps(btf_types(obj))
    got = {m["name"]: m for m in inspect(obj)["maps"]}
    for mname, d in want.items():
        m = got[mname]
        assert m["type"] == MAP_TYPES[d["type"]], mname
        assert (m["key_size"], m["value_size"], m["max_entries"], m["flags"]) == \
            (d["key_size"], d["value_size"], d["max_entries"], d["map_flags"]), mname
        assert bool(m["pinning"]) == bool(d["pinning"]), mname


def test_inspect_map_details(test_obj):
    """Spot checks that do not trust the BTF decoding above."""
    maps = {m["name"]: m for m in inspect(test_obj("maps"))["maps"]}
    assert maps["shared"]["flags"] == 1024              # BPF_F_MMAPABLE
    assert maps["hash"]["flags"] == 1                   # BPF_F_NO_PREALLOC
    assert (maps["sized"]["key_size"], maps["sized"]["value_size"]) == (4, 12)
    assert maps["hash"]["value_size"] == 8              # struct pair
    assert maps["lru"]["key_size"] == 8
    assert maps["events"]["type"] == "ringbuf" and maps["events"]["max_entries"] == 4096
    assert maps["outer"]["type"] == "array_of_maps"
    pinned = {m["name"]: m for m in inspect(test_obj("pinned"))["maps"]}
    assert pinned["oracle_pinned"]["pinning"]


@pytest.mark.parametrize("name", OBJECTS)
def test_inspect_global_data_maps(test_obj, name):
    obj = test_obj(name)
    sections, _ = readelf(obj)
    data = {s[0]: s[2] for s in sections.values()
            if s[0] in (".data", ".bss", ".rodata") or s[0].startswith((".data.", ".rodata."))}
    maps = inspect(obj)["maps"]
    for sec, size in data.items():
        # libbpf's naming: an object-name prefix, then the section name.
        m = [m for m in maps if m["name"].endswith(sec) and "." not in m["name"][:-len(sec)]]
        assert len(m) == 1, (sec, [x["name"] for x in maps])
        m = m[0]
        assert (m["type"], m["key_size"], m["value_size"], m["max_entries"]) == \
            ("array", 4, size, 1), sec


def _section_bytes(obj, name, tmp_path):
    out = tmp_path / "sec.bin"
    tool("llvm-objcopy", "--dump-section", "%s=%s" % (name, out), obj, str(tmp_path / "o"))
    return out.read_bytes()


@pytest.mark.parametrize("name", ["globals", "subprogs", "sections"])
def test_inspect_globals(test_obj, tmp_path, name):
    obj = test_obj(name)
    sections, symbols = readelf(obj)
    want = btf_globals(btf_types(obj))
    got = {g["name"]: g for g in inspect(obj)["globals"]}
    assert want
    for var, (sec, tname, signed) in want.items():
        g = got[var]
        assert g["section"] == sec
        assert tname in g["type"], (var, g["type"])
        (_, off, size, *_), = [s for s in symbols if s[0] == var]
        assert g["size"] == size
        if sec == ".bss":
            raw = bytes(size)
        else:
            raw = _section_bytes(obj, sec, tmp_path)[off:off + size]
        if size <= 8:
            assert g["value"] == int.from_bytes(raw, "little", signed=signed), var


def test_inspect_global_values(test_obj):
    """The defaults written in tests/bpf/globals.bpf.c."""
    got = {g["name"]: g["value"] for g in inspect(test_obj("globals"))["globals"]}
    assert got["scale"] == 3 and got["bias"] == 1000 and got["offset"] == -7
    assert got["big"] == 5 << 32 and got["enabled"] == 1
    assert got["counter"] == 5 and got["custom_val"] == 77 and got["custom_ro"] == 11
    assert got["hits"] == 0


def test_inspect_text(test_obj):
    r = hermes("bpf", "inspect", test_obj("sections"))
    assert r.returncode == 0, r.stderr
    for word in ("sec_migrate", "sk_reuseport/migrate", "socks", "nsocks"):
        assert word in r.stdout


# -- bad input ---------------------------------------------------------------

def _corrupt_shoff(raw):
    """e_shoff past the end of the file."""
    return raw[:0x28] + struct.pack("<Q", len(raw) + 4096) + raw[0x30:]


def _corrupt_btf(raw, obj):
    sections, _ = readelf(obj)
    (off,) = [s[1] for s in sections.values() if s[0] == ".BTF"]
    return raw[:off] + b"\xde\xad" + raw[off + 2:]      # bad BTF magic


def _corrupt_shnum(raw):
    """More section headers than the file holds."""
    return raw[:0x3c] + struct.pack("<H", 0x7fff) + raw[0x3e:]


def bad_objects(test_obj, tmp_path):
    obj = test_obj("maps")
    raw = open(obj, "rb").read()
    text = tmp_path / "text.o"
    text.write_text("this is not an ELF file\n")
    out = {"missing": str(tmp_path / "missing.bpf.o"), "text": str(text),
           "non-bpf-elf": shutil.which("true") or "/bin/true"}
    variants = {"empty": b"", "truncated-header": raw[:40], "truncated-half": raw[:len(raw) // 2],
                "truncated-end": raw[:-1], "bad-shoff": _corrupt_shoff(raw),
                "bad-shnum": _corrupt_shnum(raw), "bad-btf-magic": _corrupt_btf(raw, obj)}
    for k, v in variants.items():
        p = tmp_path / (k + ".bpf.o")
        p.write_bytes(v)
        out[k] = str(p)
    return out


BAD = ["missing", "text", "non-bpf-elf", "empty", "truncated-header", "truncated-half",
       "truncated-end", "bad-shoff", "bad-shnum", "bad-btf-magic"]


@pytest.mark.parametrize("kind", BAD)
def test_inspect_bad_object(test_obj, tmp_path, kind):
    assert_usage_error(hermes("bpf", "inspect", bad_objects(test_obj, tmp_path)[kind], "--json"))


@pytest.mark.parametrize("kind", BAD)
def test_load_bad_object(test_obj, tmp_path, kind):
    """Rejected before anything is loaded, so no root is needed."""
    pin = tmp_path / "pins"
    r = hermes("bpf", "load", bad_objects(test_obj, tmp_path)[kind], "--pin", str(pin))
    assert_usage_error(r)
    assert not pin.exists() or not os.listdir(pin)


@pytest.mark.parametrize("setting", [
    "nosuchvar=1",          # unknown name
    "scale=300",            # __u8
    "scale=-1",
    "offset=40000",         # __s16
    "offset=-32769",
    "big=18446744073709551616",
    "enabled=2",            # bool
    "scale=abc",
    "scale",                # no '='
    "=3",
])
def test_load_bad_set(test_obj, tmp_path, setting):
    pin = tmp_path / "pins"
    r = hermes("bpf", "load", test_obj("globals"), "--pin", str(pin), "--set", setting)
    assert_usage_error(r)
    assert not pin.exists() or not os.listdir(pin)


def test_load_verifier_rejection(bpf, pin_dir, test_obj):
    d = os.path.join(pin_dir, "bad")
    r = hermes("bpf", "load", test_obj("bad_verifier"), "--pin", d)
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert "out_of_bounds" in r.stderr                  # which program
    assert "invalid access to map value" in r.stderr    # the verifier's verdict
    assert len(r.stderr.splitlines()) > 1
    # Nothing is left pinned, as with bpftool.
    left = [os.path.join(p, f) for p, _, fs in os.walk(d) for f in fs] if os.path.isdir(d) else []
    assert left == []


# -- help --------------------------------------------------------------------

@pytest.mark.parametrize("argv", [[], ["bpf"], ["bpf", "load"], ["bpf", "inspect"]])
def test_help(argv):
    r = hermes(*(argv + ["--help"]))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage:")
    assert r.stderr == ""
    if argv[-1:] == ["load"]:
        assert "--pin" in r.stdout and "--set" in r.stdout
    if argv[-1:] == ["inspect"]:
        assert "--json" in r.stdout


@pytest.mark.skipif(not os.path.exists("/usr/bin/python3"), reason="no /usr/bin/python3")
@pytest.mark.parametrize("name", OBJECTS)
def test_inspect_same_on_system_python(test_obj, name):
    """The .deb targets Debian's own Python: same answer there."""
    obj = test_obj(name)
    r = subprocess.run(["/usr/bin/python3", "-m", "hermes.ctl", "bpf", "inspect", obj, "--json"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == inspect(obj)
