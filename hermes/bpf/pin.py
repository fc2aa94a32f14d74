"""bpffs: mounting it, pinning objects into it, and opening pinned objects."""

import ctypes
import errno
import os

from . import sys
from .errors import SyscallError

BPF_FS_MAGIC = 0xcafe4a11   # include/uapi/linux/magic.h
DEFAULT = "/sys/fs/bpf"

_libc = ctypes.CDLL(None, use_errno=True)
_libc.statfs.argtypes = (ctypes.c_char_p, ctypes.c_void_p)
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p)
_mounted = set()


def fs_magic(path):
    """statfs(path).f_type; f_type is the first (long) member on Linux."""
    buf = ctypes.create_string_buffer(512)   # larger than any struct statfs
    if _libc.statfs(os.fsencode(path), buf) != 0:
        err = ctypes.get_errno()
        raise SyscallError("bpffs %s: statfs" % path, err)
    return ctypes.c_ulong.from_buffer(buf).value & 0xffffffff


def ensure_bpffs(path=DEFAULT):
    """Mount bpffs at path unless it is already there; mounting needs root."""
    if path in _mounted:
        return
    if not os.path.isdir(path):
        os.makedirs(path, mode=0o700, exist_ok=True)
    if fs_magic(path) != BPF_FS_MAGIC:
        if os.geteuid() != 0:
            raise SyscallError("bpffs %s: mount" % path, errno.EPERM,
                               "not mounted, and mounting it needs root")
        # mode=0700 as systemd mounts it: pins are root's business.
        if _libc.mount(b"bpf", os.fsencode(path), b"bpf", 0, b"mode=0700") != 0:
            raise SyscallError("bpffs %s: mount" % path, ctypes.get_errno())
    _mounted.add(path)


def makedirs(path, mode=0o700):
    """Create a pin directory (and parents) on bpffs."""
    try:
        os.makedirs(path, mode=mode, exist_ok=True)
    except OSError as e:
        raise SyscallError("pin dir %s: mkdir" % path, e.errno) from None


def pin(fd, path):
    """BPF_OBJ_PIN: make the object behind fd outlive us at path (on bpffs)."""
    name = sys.c_string(os.fsencode(path))
    attr = sys.ObjAttr(pathname=sys.addr(name), bpf_fd=fd)
    sys.bpf(sys.BPF_OBJ_PIN, attr, "pin %s" % path)


def get(path, flags=0):
    """BPF_OBJ_GET -> a new fd for the object pinned at path.

    flags: 0, sys.BPF_F_RDONLY or sys.BPF_F_WRONLY (maps only).
    """
    name = sys.c_string(os.fsencode(path))
    attr = sys.ObjAttr(pathname=sys.addr(name), file_flags=flags)
    return sys.bpf(sys.BPF_OBJ_GET, attr, "pinned %s: open" % path)
