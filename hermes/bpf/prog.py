"""BPF programs: load (with the verifier log), test run, pinning."""

import ctypes
import errno
import os

from . import pin as _pin
from . import sys
from .errors import BPFError, SyscallError, VerifierError
from .fd import FD

# Where the verifier log buffer starts; it grows 4x on ENOSPC (sys.LOG_LIMIT).
LOG_START = sys.LOG_START


class Program(FD):
    """An fd to a loaded program."""

    def __init__(self, fd, name, prog_type):
        self.fd = fd
        self.name = name
        self.type = prog_type

    @classmethod
    def load(cls, name, prog_type, insns, license="GPL", expected_attach_type=0, btf_fd=0,
             func_info=b"", func_info_rec_size=0, line_info=b"", line_info_rec_size=0,
             prog_flags=0, kern_version=0, attach_btf_id=0):
        """BPF_PROG_LOAD; raises VerifierError("program NAME: load", errno, log).

        The first try is quiet (no log: faster, and a log can only overflow);
        on failure it is retried with a log buffer that grows on ENOSPC, so the
        error keeps the verifier's whole log.
        """
        op = "program %s: load" % name
        insns = bytes(insns)
        if not insns or len(insns) % sys.INSN_SIZE:
            raise VerifierError(op, errno.EINVAL, "",
                                "instructions are %d bytes, not a multiple of 8" % len(insns))
        code = ctypes.create_string_buffer(insns, len(insns))
        lic = sys.c_string(license)
        fi = ctypes.create_string_buffer(bytes(func_info), len(func_info)) if func_info else None
        li = ctypes.create_string_buffer(bytes(line_info), len(line_info)) if line_info else None

        def attempt(buf):
            attr = sys.ProgLoadAttr(
                prog_type=prog_type, insn_cnt=len(insns) // sys.INSN_SIZE, insns=sys.addr(code),
                license=sys.addr(lic), kern_version=kern_version, prog_flags=prog_flags,
                prog_name=sys.obj_name(name), expected_attach_type=expected_attach_type,
                prog_btf_fd=btf_fd, attach_btf_id=attach_btf_id)
            if fi is not None and func_info_rec_size:
                attr.func_info, attr.func_info_rec_size = sys.addr(fi), func_info_rec_size
                attr.func_info_cnt = len(func_info) // func_info_rec_size
            if li is not None and line_info_rec_size:
                attr.line_info, attr.line_info_rec_size = sys.addr(li), line_info_rec_size
                attr.line_info_cnt = len(line_info) // line_info_rec_size
            if buf is not None:
                attr.log_level = sys.BPF_LOG_LEVEL1
                attr.log_buf, attr.log_size = sys.addr(buf), len(buf)
            return sys.bpf(sys.BPF_PROG_LOAD, attr, op)

        try:
            fd = sys.with_log(attempt, LOG_START)
        except SyscallError as e:
            raise VerifierError(op, e.errno, getattr(e, "log", "")) from None
        return cls(fd, name, prog_type)

    @classmethod
    def from_fd(cls, fd):
        """Wrap an existing program fd (ownership passes to the Program)."""
        try:
            info = sys.obj_info(fd, sys.ProgInfo(), "program fd %d: info" % fd)
        except BPFError:
            os.close(fd)
            raise
        return cls(fd, info.name.decode("utf-8", "replace"), info.type)

    @classmethod
    def from_pin(cls, path):
        return cls.from_fd(_pin.get(path))

    def info(self):
        """The kernel's struct bpf_prog_info (sys.ProgInfo) for this program."""
        return sys.obj_info(self.fd, sys.ProgInfo(), "program %s: info" % self.name)

    def test_run(self, data_in=b"", repeat=1, ctx_in=None):
        """BPF_PROG_TEST_RUN -> (retval, data_out, duration_ns)."""
        op = "program %s: test run" % self.name
        if self.fd < 0:
            raise SyscallError(op, errno.EBADF, "program is closed")
        data_in = bytes(data_in)
        din = ctypes.create_string_buffer(data_in, len(data_in) or 1)
        ctx = ctypes.create_string_buffer(bytes(ctx_in), len(ctx_in)) if ctx_in else None
        # Room for programs that grow the packet (XDP may add a page's worth).
        out_len = len(data_in) + 4096
        for _ in range(2):
            dout = ctypes.create_string_buffer(out_len)
            attr = sys.TestRunAttr(prog_fd=self.fd, data_size_in=len(data_in),
                                   data_in=sys.addr(din) if data_in else 0,
                                   data_size_out=out_len, data_out=sys.addr(dout),
                                   repeat=repeat)
            if ctx is not None:
                attr.ctx_in, attr.ctx_size_in = sys.addr(ctx), len(ctx_in)
            try:
                sys.bpf(sys.BPF_PROG_TEST_RUN, attr, op)
            except SyscallError as e:
                # The kernel reports the size it needed; run once more with it.
                if e.errno == errno.ENOSPC and attr.data_size_out > out_len:
                    out_len = attr.data_size_out
                    continue
                raise
            return attr.retval, dout.raw[:attr.data_size_out], attr.duration
        raise SyscallError(op, errno.ENOSPC, "output kept growing")

    def close(self):
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    def __repr__(self):
        return "Program(%r, fd=%d, type=%d)" % (self.name, self.fd, self.type)
