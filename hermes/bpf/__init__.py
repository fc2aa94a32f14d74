"""A pure-ctypes BPF loader for CO-RE objects.

    spec = load_spec("prog.bpf.o")        # parse: no syscalls
    spec.set_variable("threshold", 200)   # const volatile, before load
    with load_collection(spec) as coll:   # maps, BTF, CO-RE, programs
        coll.pin("/sys/fs/bpf/mine")
"""

from .errors import BPFError, NotSupported, ParseError, SyscallError, VerifierError  # noqa: F401
from .reader import load as load_spec  # noqa: F401


def load_collection(spec, **kw):
    from .collection import load
    return load(spec, **kw)
