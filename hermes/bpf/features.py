"""Small, cached probes of what the running kernel supports.

Each answers by trying the smallest thing that exercises the feature; EINVAL
(or E2BIG for attrs the kernel does not know) means "no", anything else that
fails (EPERM...) is raised, since "no" would be a lie.
"""

import errno
import functools
import os
import re

from . import asm, sys
from .errors import NotSupported, SyscallError
from .maps import Map
from .prog import Program

_NO = (errno.EINVAL, errno.E2BIG, errno.EOPNOTSUPP, 524)   # 524: kernel-internal ENOTSUPP


@functools.lru_cache(maxsize=None)
def kernel_release():
    """(major, minor, patch) of the running kernel, e.g. (6, 18, 44)."""
    nums = re.findall(r"\d+", os.uname().release)[:3]
    return tuple(int(n) for n in nums + ["0"] * (3 - len(nums)))


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
