"""Small, cached probes of what the running kernel supports.

Each answers by trying the smallest thing that exercises the feature; EINVAL
(or E2BIG for attrs the kernel does not know) means "no", anything else that
fails (EPERM...) is raised, since "no" would be a lie.
"""

import errno
import functools
import os

from . import asm, sys
from .errors import NotSupported, SyscallError, VerifierError
from .maps import Map
from .prog import Program

_NO = (errno.EINVAL, errno.E2BIG, errno.EOPNOTSUPP, 524)   # 524: kernel-internal ENOTSUPP


@functools.lru_cache(maxsize=None)
def kernel_release():
    """(major, minor, patch) of the running kernel, e.g. (6, 18, 44)."""
    # "6.1.0-56-amd64", "6.12.95+deb12-amd64": the leading digit runs.
    nums = []
    for part in os.uname().release.split(".")[:3]:
        digits = part[:len(part) - len(part.lstrip("0123456789"))]
        if not digits:
            break
        nums.append(int(digits))
    return tuple(nums + [0] * (3 - len(nums)))


def kernel_version_code():
    """LINUX_VERSION_CODE of the running kernel (kprobes wanted it before 5.0)."""
    a, b, c = kernel_release()
    return (a << 16) + (b << 8) + min(c, 255)


# Program types whose load needs an expected attach type to get past the
# attach checks (Linux 4.17 introduced expected_attach_type).
_PROG_ATTACH = {
    sys.BPF_PROG_TYPE_CGROUP_SOCK_ADDR: sys.BPF_CGROUP_INET4_CONNECT,
    sys.BPF_PROG_TYPE_SK_LOOKUP: sys.BPF_SK_LOOKUP,
    sys.BPF_PROG_TYPE_CGROUP_SOCKOPT: sys.BPF_CGROUP_GETSOCKOPT,
    sys.BPF_PROG_TYPE_SK_REUSEPORT: sys.BPF_SK_REUSEPORT_SELECT,
}
# Syscall programs must be sleepable (Linux 5.14).
_PROG_FLAGS = {sys.BPF_PROG_TYPE_SYSCALL: sys.BPF_F_SLEEPABLE}
# These load only against a BTF attach target; a probe cannot answer for them.
_NEEDS_TARGET = frozenset((sys.BPF_PROG_TYPE_TRACING, sys.BPF_PROG_TYPE_EXT,
                           sys.BPF_PROG_TYPE_LSM, sys.BPF_PROG_TYPE_STRUCT_OPS,
                           sys.BPF_PROG_TYPE_NETFILTER))


@functools.lru_cache(maxsize=None)
def has_prog_type(prog_type):
    """Can a trivial program (r0 = 0; exit) of this type be loaded?

    Not answerable for types that need a BTF attach target (tracing, ext,
    lsm, struct_ops, netfilter): raises NotSupported for those.
    """
    if prog_type in _NEEDS_TARGET:
        raise NotSupported("probing program type %d (needs an attach target)" % prog_type)
    insns = asm.assemble(asm.mov64_imm(0, 0), asm.exit())
    try:
        with Program.load("probe", prog_type, insns,
                          expected_attach_type=_PROG_ATTACH.get(prog_type, 0),
                          prog_flags=_PROG_FLAGS.get(prog_type, 0),
                          kern_version=kernel_version_code()):
            return True
    except SyscallError as e:
        if e.errno in _NO:
            return False
        raise


# Parameters a map type insists on: (key_size, value_size, max_entries, flags).
_MAP_PARAMS = {
    sys.BPF_MAP_TYPE_LPM_TRIE: (8, 4, 1, sys.BPF_F_NO_PREALLOC),
    sys.BPF_MAP_TYPE_QUEUE: (0, 4, 1, 0),                      # Linux 4.20
    sys.BPF_MAP_TYPE_STACK: (0, 4, 1, 0),
    sys.BPF_MAP_TYPE_BLOOM_FILTER: (0, 4, 1, 0),               # Linux 5.16
    sys.BPF_MAP_TYPE_RINGBUF: (0, 0, 4096, 0),                 # Linux 5.8
    sys.BPF_MAP_TYPE_USER_RINGBUF: (0, 0, 4096, 0),            # Linux 6.1
    # key: struct bpf_cgroup_storage_key (u64 + u32, padded to 16).
    sys.BPF_MAP_TYPE_CGROUP_STORAGE: (16, 4, 0, 0),            # Linux 4.19
    sys.BPF_MAP_TYPE_PERCPU_CGROUP_STORAGE: (16, 4, 0, 0),
    sys.BPF_MAP_TYPE_ARENA: (0, 0, 1, sys.BPF_F_MMAPABLE),     # Linux 6.9
    sys.BPF_MAP_TYPE_STACK_TRACE: (4, 8, 1, 0),
    sys.BPF_MAP_TYPE_REUSEPORT_SOCKARRAY: (4, 8, 1, 0),        # Linux 4.19
}
_MAP_NEEDS_BTF = frozenset((sys.BPF_MAP_TYPE_SK_STORAGE, sys.BPF_MAP_TYPE_INODE_STORAGE,
                            sys.BPF_MAP_TYPE_TASK_STORAGE, sys.BPF_MAP_TYPE_CGRP_STORAGE,
                            sys.BPF_MAP_TYPE_STRUCT_OPS))


@functools.lru_cache(maxsize=None)
def has_map_type(map_type):
    """Can a one-entry map of this type be created?

    Map-in-map types are probed with a one-entry array as the inner map.
    Types that need BTF to be created (local storage, struct_ops) raise
    NotSupported: a probe without BTF cannot tell "unknown" from "no BTF".
    """
    if map_type in _MAP_NEEDS_BTF:
        raise NotSupported("probing map type %d (needs BTF)" % map_type)
    key, value, entries, flags = _MAP_PARAMS.get(map_type, (4, 4, 1, 0))
    inner = None
    try:
        if map_type in (sys.BPF_MAP_TYPE_ARRAY_OF_MAPS, sys.BPF_MAP_TYPE_HASH_OF_MAPS):
            inner = Map.create("probe_inner", sys.BPF_MAP_TYPE_ARRAY, 4, 4, 1)
        with Map.create("probe", map_type, key, value, entries, flags,
                        inner_map_fd=inner.fd if inner else 0):
            return True
    except SyscallError as e:
        if e.errno in _NO:
            return False
        raise
    finally:
        if inner is not None:
            inner.close()


@functools.lru_cache(maxsize=None)
def has_mmapable_array():
    """BPF_F_MMAPABLE arrays (Linux 5.5)."""
    try:
        with Map.create("probe", sys.BPF_MAP_TYPE_ARRAY, 4, 8, 1, sys.BPF_F_MMAPABLE):
            return True
    except SyscallError as e:
        if e.errno in _NO:
            return False
        raise


@functools.lru_cache(maxsize=None)
def has_map_freeze():
    """BPF_MAP_FREEZE (Linux 5.2): .rodata relies on it."""
    with Map.create("probe", sys.BPF_MAP_TYPE_ARRAY, 4, 4, 1) as m:
        try:
            m.freeze()
            return True
        except SyscallError as e:
            if e.errno in _NO:
                return False
            raise


@functools.lru_cache(maxsize=256)
def has_btf_kind(blob):
    """Does the kernel accept this BTF blob?  The btf helper builds one blob per
    kind it wants to know about (FLOAT: Linux 5.13, DECL_TAG: 5.16,
    TYPE_TAG: 5.17, ENUM64: 6.0, DATASEC/VAR: 5.2, FUNC linkage: 5.6)."""
    try:
        fd = sys.btf_load(bytes(blob))
    except SyscallError as e:
        if e.errno in _NO:
            return False
        raise
    os.close(fd)
    return True


# --- What Hermes uses, each with the first Linux release that has it ---------------

# struct sk_reuseport_md (uapi/linux/bpf.h): data, data_end (8-byte __bpf_md_ptr),
# len, eth_protocol, ip_protocol, bind_inany, hash (u32), then sk (5.14, at 40) and
# migrating_sk (5.14, at 48).
_MD_MIGRATING_SK = 48
_SK_PASS = 1
BPF_FUNC_ktime_get_coarse_ns = 160     # Linux 5.11
BPF_FUNC_loop = 181                    # Linux 5.17


def _loads(prog_type, insns, expected_attach_type=0):
    """Does this program load?  A verifier "no" (EACCES: unknown ctx field,
    EINVAL: unknown helper) is "no"; other errors are raised."""
    try:
        with Program.load("probe", prog_type, asm.assemble(*insns),
                          expected_attach_type=expected_attach_type):
            return True
    except SyscallError as e:
        if e.errno in _NO or e.errno == errno.EACCES:
            return False
        raise


@functools.lru_cache(maxsize=None)
def has_helper(prog_type, helper_id):
    """Can a program of this type call this helper?  The call is made with
    whatever is in the registers: a verifier that knows the helper complains
    about the arguments, one that does not says "invalid/unknown func"."""
    try:
        with Program.load("probe", prog_type, asm.assemble(
                asm.call(helper_id), asm.mov64_imm(0, _SK_PASS), asm.exit())):
            return True
    except VerifierError as e:
        if e.errno not in (errno.EINVAL, errno.EACCES):
            raise           # not the verifier's answer (EPERM: no privilege, or memlock)
        return not ("invalid func " in e.log or "unknown func " in e.log)


@functools.lru_cache(maxsize=None)
def has_reuseport_migrate():
    """sk_reuseport/migrate (Linux 5.14): the program reads md->migrating_sk,
    a context field older verifiers reject."""
    return _loads(sys.BPF_PROG_TYPE_SK_REUSEPORT,
                  (asm.ldx_mem(asm.BPF_DW, 2, 1, _MD_MIGRATING_SK),
                   asm.mov64_imm(0, _SK_PASS), asm.exit()),
                  sys.BPF_SK_REUSEPORT_SELECT_OR_MIGRATE)


def has_memcg_accounting():
    """BPF memory charged to memory cgroups, not RLIMIT_MEMLOCK (Linux 5.11)."""
    try:
        return has_helper(sys.BPF_PROG_TYPE_SOCKET_FILTER, BPF_FUNC_ktime_get_coarse_ns)
    except SyscallError as e:
        if e.errno == errno.EPERM and os.geteuid() == 0:
            # Root refused a one-page program: the user's locked memory (shared
            # by every root process before 5.11) is over the limit already.
            return False
        raise


_memlock_checked = False


def bump_memlock():
    """Before Linux 5.11 BPF memory counts against RLIMIT_MEMLOCK (64 KiB by
    default on Debian 11): lift the limit there, as libbpf does, or the first
    maps fail with EPERM.  5.11 moved the accounting to memory cgroups and added
    bpf_ktime_get_coarse_ns, which is how libbpf tells, and so do we.  Best
    effort: without CAP_SYS_RESOURCE the limit stays."""
    global _memlock_checked
    if _memlock_checked:
        return
    _memlock_checked = True
    if has_memcg_accounting():
        return
    import resource
    try:
        resource.setrlimit(resource.RLIMIT_MEMLOCK,
                           (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    except (ValueError, OSError):
        pass


def has_kernel_btf():
    """The kernel describes itself in BTF (Linux 5.4 with CONFIG_DEBUG_INFO_BTF)."""
    return os.path.exists("/sys/kernel/btf/vmlinux")


def _btf_kind(kind):
    from . import btf
    return has_btf_kind(btf.probe_blob(getattr(btf, "KIND_" + kind)))


class Feature:
    """A kernel feature Hermes uses: its probe, the Linux release that brought it,
    and what happens without it."""

    def __init__(self, name, version, probe, without):
        self.name, self.version, self.probe, self.without = name, version, probe, without

    def supported(self):
        return bool(self.probe())

    def require(self):
        """Raise NotSupported("<name>: not supported: needs Linux X.Y") when absent."""
        if not self.supported():
            raise NotSupported(self.name, self.version)


# The table in the README is generated from these minimum versions
# (`hermesctl bpf features --table`); keep it ordered by version.
FEATURES = (
    Feature("kernel BTF", "5.4", has_kernel_btf,
            "required: CO-RE relocates against /sys/kernel/btf/vmlinux"),
    Feature("mmapable arrays", "5.5", has_mmapable_array,
            "required: the Worker Status Table is shared memory"),
    Feature("memcg accounting", "5.11", has_memcg_accounting,
            "BPF memory counts against RLIMIT_MEMLOCK: the loader lifts it (as root)"),
    Feature("bpf_ktime_get_coarse_ns", "5.11",
            lambda: has_helper(sys.BPF_PROG_TYPE_SK_REUSEPORT, BPF_FUNC_ktime_get_coarse_ns),
            "the dispatcher reads the exact clock (CO-RE enum check)"),
    Feature("BTF FLOAT", "5.13", lambda: _btf_kind("FLOAT"),
            "the loader strips it from objects' BTF"),
    Feature("sk_reuseport/migrate", "5.14", has_reuseport_migrate,
            "a closing listener's queued connections are not moved: "
            "the launcher keeps each listener open until its queue drains"),
    Feature("BTF DECL_TAG", "5.16", lambda: _btf_kind("DECL_TAG"),
            "the loader strips it from objects' BTF"),
    Feature("BTF TYPE_TAG", "5.17", lambda: _btf_kind("TYPE_TAG"),
            "the loader strips it from objects' BTF"),
    Feature("bpf_loop", "5.17",
            lambda: has_helper(sys.BPF_PROG_TYPE_SOCKET_FILTER, BPF_FUNC_loop),
            "objects calling it fail to load, with the verifier's reason (as with libbpf)"),
    Feature("BTF ENUM64", "6.0", lambda: _btf_kind("ENUM64"),
            "the loader strips it from objects' BTF"),
)
BY_NAME = {f.name: f for f in FEATURES}


def supported(name):
    return BY_NAME[name].supported()


def require(name):
    BY_NAME[name].require()


def _vkey(version):
    return tuple(int(x) for x in version.split("."))


def table(kernels=("5.10", "6.1", "6.12")):
    """Rows (feature, since, {kernel: bool}, without): which of these kernel
    releases have each feature, by the minimum versions above (no probing)."""
    return [(f.name, f.version, {k: _vkey(k) >= _vkey(f.version) for k in kernels}, f.without)
            for f in FEATURES]
