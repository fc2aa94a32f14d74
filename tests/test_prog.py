"""Programs against the running kernel: load, verifier log, test run, pinning,
and the feature probes."""

import errno
import os
import struct

import pytest

from hermes.bpf import asm, features, prog, sys
from hermes.bpf.asm import BPF_DW
from hermes.bpf.errors import NotSupported, SyscallError, VerifierError
from hermes.bpf.maps import Map
from hermes.bpf.prog import Program

RET42 = asm.assemble(asm.mov64_imm(0, 42), asm.exit())
# r0 = r2: r2 is never written before, so the verifier says "R2 !read_ok".
UNINIT = asm.assemble(asm.mov64_reg(0, 2), asm.exit())


def test_socket_filter_test_run_returns_42(fds):
    with Program.load("ret42", sys.BPF_PROG_TYPE_SOCKET_FILTER, RET42) as p:
        assert p.type == sys.BPF_PROG_TYPE_SOCKET_FILTER and p.fd >= 0
        pkt = bytes(range(64))
        retval, out, duration = p.test_run(pkt, repeat=3)
        assert retval == 42
        # The packet comes back (the kernel rebuilds the Ethernet header).
        assert len(out) == 64 and out[14:] == pkt[14:]
        assert duration >= 0
        info = p.info()
        assert info.name == b"ret42" and info.type == sys.BPF_PROG_TYPE_SOCKET_FILTER


def test_verifier_rejection_keeps_log(fds):
    with pytest.raises(VerifierError) as e:
        Program.load("uninit", sys.BPF_PROG_TYPE_SOCKET_FILTER, UNINIT)
    err = e.value
    assert err.errno == errno.EACCES
    assert "R2 !read_ok" in err.log and "processed" in err.log
    text = str(err)
    assert text.startswith("program uninit: load: EACCES")
    assert text.rstrip().endswith("R2 !read_ok")   # the verdict, not bookkeeping


def test_log_overflow_is_retried_until_whole(fds, monkeypatch):
    monkeypatch.setattr(prog, "LOG_START", sys.LOG_SIZE_MIN)
    calls = []
    real = sys.bpf

    def counting(cmd, attr, op=None):
        if cmd == sys.BPF_PROG_LOAD:
            calls.append(attr.log_size)
        return real(cmd, attr, op)

    monkeypatch.setattr(sys, "bpf", counting)
    body = [asm.mov64_imm(1, i) for i in range(60)]
    with pytest.raises(VerifierError) as e:
        Program.load("long", sys.BPF_PROG_TYPE_SOCKET_FILTER,
                     asm.assemble(*body, asm.mov64_reg(0, 2), asm.exit()))
    log = e.value.log
    # Quiet try, then 128, 512, ... until the log fits.
    assert calls[0] == 0 and calls[1] == sys.LOG_SIZE_MIN and len(calls) >= 4
    assert calls[2:] == [calls[1] * 4 ** i for i in range(1, len(calls) - 1)]
    assert len(log) > sys.LOG_SIZE_MIN
    # head kept (the entry state first: "0: R1=ctx()" on 6.18, "0: R1=ctx(off=0,imm=0)"
    # on 6.1; 5.10 starts with the first instruction) ...
    assert log.startswith(("0: R1=ctx(", "0: (b7) r1 = 0"))
    assert "59: (b7) r1 = 59" in log and "R2 !read_ok" in log  # ... and tail
    assert e.value.errno == errno.EACCES            # the verdict, not ENOSPC


def test_bad_instruction_length_is_verifier_error():
    with pytest.raises(VerifierError, match="not a multiple of 8"):
        Program.load("odd", sys.BPF_PROG_TYPE_SOCKET_FILTER, RET42[:-1])


def test_program_using_a_map(fds):
    """ld_map_fd + a helper call: r0 = *(u64 *)bpf_map_lookup_elem(map, &0)."""
    with Map.create("test_val", sys.BPF_MAP_TYPE_ARRAY, 4, 8, 1) as m:
        m.update(struct.pack("=I", 0), struct.pack("=Q", 1234))
        code = asm.assemble(
            asm.st_mem(asm.BPF_W, 10, -4, 0),           # *(u32 *)(fp - 4) = 0
            asm.mov64_reg(2, 10), asm.alu64_imm(asm.BPF_ADD, 2, -4),
            asm.ld_map_fd(1, m.fd),
            asm.call(1),                                 # bpf_map_lookup_elem
            asm.jmp_imm(asm.BPF_JEQ, 0, 0, 1),
            asm.ldx_mem(BPF_DW, 0, 0, 0),
            asm.exit())
        with Program.load("lookup", sys.BPF_PROG_TYPE_SOCKET_FILTER, code) as p:
            assert p.test_run(b"\0" * 64)[0] == 1234


def test_pin_and_from_pin_round_trip(pin_dir, fds):
    path = os.path.join(pin_dir, "ret42")
    with Program.load("ret42", sys.BPF_PROG_TYPE_SOCKET_FILTER, RET42) as p:
        p.pin(path)
    with Program.from_pin(path) as p2:
        assert p2.name == "ret42" and p2.type == sys.BPF_PROG_TYPE_SOCKET_FILTER
        assert p2.test_run(b"\0" * 64)[0] == 42
    p2.close()   # idempotent
    os.unlink(path)


def test_test_run_error_has_context(fds):
    sk_pass = asm.assemble(asm.mov64_imm(0, 1), asm.exit())   # SK_PASS
    with Program.load("reuse", sys.BPF_PROG_TYPE_SK_REUSEPORT, sk_pass) as p:
        with pytest.raises(SyscallError, match="^program reuse: test run: "):
            p.test_run(b"\0" * 64)   # sk_reuseport has no test_run


def test_btf_load_of_minimal_blob(fds):
    # header + one INT "int" (32 bits, signed); string table "\0int\0".
    strs = b"\0int\0"
    types = struct.pack("=III", 1, 1 << 24, 4) + struct.pack("=I", (1 << 24) | 32)
    hdr = struct.pack("=HBBIIIII", 0xeb9f, 1, 0, 24, 0, len(types), len(types), len(strs))
    blob = hdr + types + strs
    fd = sys.btf_load(blob)
    os.close(fd)
    assert features.has_btf_kind(blob) is True
    # kind 31 does not exist: the kernel says no, the probe says False.
    bad = hdr + struct.pack("=III", 1, 31 << 24, 4) + struct.pack("=I", 32) + strs
    assert features.has_btf_kind(bad) is False


def test_feature_probes(fds):
    assert features.kernel_release() >= (4, 0, 0)
    assert features.has_prog_type(sys.BPF_PROG_TYPE_SOCKET_FILTER) is True
    assert features.has_prog_type(sys.BPF_PROG_TYPE_SK_REUSEPORT) is True
    assert features.has_prog_type(200) is False
    assert features.has_map_type(sys.BPF_MAP_TYPE_REUSEPORT_SOCKARRAY) is True
    assert features.has_map_type(sys.BPF_MAP_TYPE_ARRAY_OF_MAPS) is True
    assert features.has_map_type(200) is False
    assert features.has_mmapable_array() is True
    assert features.has_map_freeze() is True
    with pytest.raises(NotSupported):
        features.has_prog_type(sys.BPF_PROG_TYPE_TRACING)
