"""The syscall layer: struct layouts against <linux/bpf.h>, the instruction
encoder, and the raw syscall's error path."""

import ctypes
import errno
import re
import shutil
import subprocess

import pytest

from hermes.bpf import asm, sys
from hermes.bpf.errors import BPFError, SyscallError


def _members(cls, c_prefix, base=0):
    """Yield (C member path, ctypes offset, ctypes size) for every named field.

    Anonymous ctypes members map to anonymous C members (no path component);
    bit-fields and _pad fields have no C name to ask offsetof() about.
    """
    anon = getattr(cls, "_anonymous_", ())
    for f in cls._fields_:
        name, typ = f[0], f[1]
        desc = getattr(cls, name)
        off = base + desc.offset
        if name in anon:
            yield from _members(typ, c_prefix, off)
            continue
        if name.startswith("_") or len(f) == 3:
            continue
        path = c_prefix + name
        yield path, off, ctypes.sizeof(typ)
        if isinstance(typ, type) and issubclass(typ, (ctypes.Structure, ctypes.Union)):
            yield from _members(typ, path + ".", off)


def _layout_program():
    checks = []
    for cls in sys.ATTRS:
        prefix = cls._c_path_ + "." if cls._c_path_ else ""
        for path, off, size in _members(cls, prefix):
            checks.append(("union bpf_attr", path, off, size))
    for cls in sys.INFOS:
        for path, off, size in _members(cls, ""):
            checks.append(("struct " + cls._c_struct_, path, off, size))
    lines = ["#include <stdio.h>", "#include <stddef.h>", "#include <linux/bpf.h>",
             "int main(void) {"]
    for typ, path, _, _ in checks:
        lines.append('printf("%%s %%zu %%zu\\n", "%s:%s", offsetof(%s, %s), '
                     'sizeof(((%s *)0)->%s));' % (typ, path, typ, path, typ, path))
    for cls in sys.INFOS:
        lines.append('printf("%%s %%zu 0\\n", "sizeof:%s", sizeof(struct %s));'
                     % (cls._c_struct_, cls._c_struct_))
    lines.append('printf("%s %zu 0\\n", "sizeof:bpf_insn", sizeof(struct bpf_insn));')
    lines.append('printf("%s %zu 0\\n", "sizeof:bpf_attr", sizeof(union bpf_attr));')
    lines.append("return 0; }")
    return checks, "\n".join(lines) + "\n"


def test_struct_layouts_match_uapi_header(tmp_path):
    gcc = shutil.which("gcc") or shutil.which("cc")
    if not gcc:
        pytest.skip("no C compiler")
    checks, src = _layout_program()
    c, exe = tmp_path / "layout.c", tmp_path / "layout"
    c.write_text(src)
    r = subprocess.run([gcc, "-o", str(exe), str(c)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    got = {}
    for line in out.splitlines():
        key, off, size = line.rsplit(" ", 2)
        got[key] = (int(off), int(size))
    assert len(checks) > 100   # every attr and info field was asked about
    bad = ["%s.%s: ours %d/%d, kernel %d/%d" % (t, p, o, s, *got["%s:%s" % (t, p)])
           for t, p, o, s in checks if got["%s:%s" % (t, p)] != (o, s)]
    assert not bad, "\n".join(bad)
    for cls in sys.INFOS:
        assert ctypes.sizeof(cls) == got["sizeof:" + cls._c_struct_][0], cls.__name__
    assert got["sizeof:bpf_insn"][0] == asm.INSN_SIZE
    for cls in sys.ATTRS:   # the kernel rejects a size beyond its own union
        assert ctypes.sizeof(cls) <= got["sizeof:bpf_attr"][0], cls.__name__


def test_constants_match_uapi_header(tmp_path):
    gcc = shutil.which("gcc") or shutil.which("cc")
    if not gcc:
        pytest.skip("no C compiler")
    hdr = open("/usr/include/linux/bpf.h").read()
    names = [n for n in dir(sys) if n.startswith("BPF_") and n in hdr
             and isinstance(getattr(sys, n), int)]
    # Only ask about names the installed (older) header defines as a whole word.
    names = [n for n in names if re.search(r"\b%s\b" % n, hdr)]
    src = ["#include <stdio.h>", "#include <linux/bpf.h>", "int main(void) {"]
    src += ['printf("%s %%lld\\n", (long long)(%s));' % (n, n) for n in names]
    src.append("return 0; }")
    c, exe = tmp_path / "consts.c", tmp_path / "consts"
    c.write_text("\n".join(src) + "\n")
    r = subprocess.run([gcc, "-o", str(exe), str(c)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    got = dict((l.split()[0], int(l.split()[1])) for l in out.splitlines())
    assert len(got) > 150
    bad = ["%s: ours %d, header %d" % (n, getattr(sys, n), v)
           for n, v in got.items() if getattr(sys, n) != v]
    assert not bad, "\n".join(bad)


def test_insn_roundtrip_and_builders():
    insns = [asm.mov64_imm(0, 42), asm.exit()]
    code = asm.assemble(*insns)
    assert code == b"\xb7\x00\x00\x00\x2a\x00\x00\x00" b"\x95\x00\x00\x00\x00\x00\x00\x00"
    assert asm.unpack_all(code) == insns
    lo, hi = asm.ld_map_fd(1, 7)
    assert (lo.code, lo.dst, lo.src, lo.imm, hi.imm) == (0x18, 1, sys.BPF_PSEUDO_MAP_FD, 7, 0)
    packed = asm.assemble(asm.ld_imm64(3, 0x1122334455667788))
    a, b = asm.unpack_all(packed)
    assert a.dst == 3 and (a.imm & 0xffffffff) | (b.imm << 32) == 0x1122334455667788
    # src in the high nibble, dst in the low one; negative offsets survive.
    i = asm.Insn.unpack(asm.ldx_mem(asm.BPF_W, 2, 10, -8).pack())
    assert (i.dst, i.src, i.off, i.code) == (2, 10, -8, 0x61)
    assert asm.mov64_imm(0, 0xffffffff).imm == -1


def test_obj_name_is_sanitized():
    assert sys.obj_name("hermes.bss") == b"hermes.bss"
    assert sys.obj_name("a-very-long/name with spaces!") == b"averylongnamewi"
    assert len(sys.obj_name("x" * 40)) == 15


def test_syscall_error_names_the_command():
    # A map fd of -1 is EBADF whatever the privileges.
    attr = sys.MapElemAttr(map_fd=0xffffffff)
    with pytest.raises(SyscallError) as e:
        sys.bpf(sys.BPF_MAP_FREEZE, attr)
    assert e.value.errno in (errno.EBADF, errno.EPERM)
    assert "BPF_MAP_FREEZE" in str(e.value)
    assert isinstance(e.value, BPFError)


def test_btf_load_rejects_garbage_with_log(bpf):
    with pytest.raises(SyscallError) as e:
        sys.btf_load(b"\x9f\xeb\x01\x00" + b"\x00" * 20)
    assert str(e.value).startswith("btf: load: E")
    assert e.value.errno == errno.EINVAL
    assert e.value.log   # the kernel explained itself on the logged retry
