"""The loader's exceptions.

Every failure the loader can report derives from BPFError, so a caller (and the
mutation test) can tell "the object or the kernel said no" from a bug.  Context is
prepended as the error travels up: "map workers: create: EPERM (...)".
"""

import errno as _errno
import os


class BPFError(Exception):
    """Base of every error the loader raises on purpose."""

    def __init__(self, msg):
        super().__init__(msg)
        self.msg = msg

    def add_context(self, ctx):
        """Prefix ``ctx: `` to the message; returns self so it can be re-raised."""
        self.msg = "%s: %s" % (ctx, self.msg)
        self.args = (self.msg,)
        return self

    def __str__(self):
        return self.msg


class ParseError(BPFError):
    """The object (ELF, BTF, .BTF.ext) is malformed or uses something unsupported."""


class SyscallError(BPFError):
    """A bpf(2) (or related) syscall failed; ``errno`` is the kernel's answer."""

    def __init__(self, op, err, detail=""):
        name = _errno.errorcode.get(err, "E%d" % err)
        msg = "%s: %s (%s)" % (op, name, os.strerror(err))
        if detail:
            msg += ": " + detail
        super().__init__(msg)
        self.errno = err


class VerifierError(SyscallError):
    """BPF_PROG_LOAD failed; keeps the verifier's whole log.

    str() shows only the lines that matter: the tail of the log, where the
    verifier says what it rejected, plus any CO-RE poison explanation.
    """

    TAIL = 12

    def __init__(self, op, err, log, hint=""):
        self.log = log
        self.hint = hint
        super().__init__(op, err, self._summary(log, hint))

    @classmethod
    def _summary(cls, log, hint):
        lines = [l for l in log.splitlines() if l.strip()]
        # The last lines carry the verdict; "processed N insns" is bookkeeping.
        lines = [l for l in lines if not l.startswith("processed ")]
        tail = lines[-cls.TAIL:]
        out = ""
        if tail:
            out = "\n  " + "\n  ".join(tail)
        if hint:
            out += "\n  " + hint
        return out


class NotSupported(BPFError):
    """The running kernel lacks a feature; names the version that has it."""

    def __init__(self, feature, version=None):
        msg = "%s: not supported" % feature
        if version:
            msg += ": needs Linux %s" % version
        super().__init__(msg)
        self.feature = feature
        self.version = version
