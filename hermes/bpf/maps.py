"""BPF maps: create, element access, freeze, mmap'd views, pinning."""

import ctypes
import errno
import functools
import mmap as _mmap
import os

from . import pin as _pin
from . import sys
from .errors import BPFError, SyscallError
from .fd import FD


@functools.lru_cache(maxsize=None)
def possible_cpus():
    """Number of possible CPUs: per-CPU map values carry one slot for each."""
    with open("/sys/devices/system/cpu/possible") as f:
        n = 0
        for part in f.read().strip().split(","):
            lo, _, hi = part.partition("-")
            n += int(hi or lo) - int(lo) + 1
        return n


def _round8(n):
    return (n + 7) & ~7


class Map(FD):
    """An fd to a kernel map, with the attributes it was created with."""

    def __init__(self, fd, name, map_type, key_size, value_size, max_entries, flags=0):
        self.fd = fd
        self.name = name
        self.type = map_type
        self.key_size = key_size
        self.value_size = value_size
        self.max_entries = max_entries
        self.flags = flags
        self._mmap = None
        self._views = []
        self._frozen = False

    # --- construction ---------------------------------------------------------
    @classmethod
    def create(cls, name, map_type, key_size, value_size, max_entries, flags=0, btf_fd=0,
               btf_key_type_id=0, btf_value_type_id=0, inner_map_fd=0, map_extra=0):
        attr = sys.MapCreateAttr(
            map_type=map_type, key_size=key_size, value_size=value_size,
            max_entries=max_entries, map_flags=flags, inner_map_fd=inner_map_fd,
            map_name=sys.obj_name(name), btf_fd=btf_fd, btf_key_type_id=btf_key_type_id,
            btf_value_type_id=btf_value_type_id, map_extra=map_extra)
        fd = sys.bpf(sys.BPF_MAP_CREATE, attr, "map %s: create" % name)
        return cls(fd, name, map_type, key_size, value_size, max_entries, flags)

    @classmethod
    def from_fd(cls, fd):
        """Wrap an existing map fd (ownership passes to the Map)."""
        try:
            info = sys.obj_info(fd, sys.MapInfo(), "map fd %d: info" % fd)
        except BPFError:
            os.close(fd)
            raise
        return cls(fd, info.name.decode("utf-8", "replace"), info.type, info.key_size,
                   info.value_size, info.max_entries, info.map_flags)

    @classmethod
    def from_pin(cls, path, flags=0):
        return cls.from_fd(_pin.get(path, flags))

    # --- elements ---------------------------------------------------------------
    def _check_open(self, what):
        if self.fd < 0:
            raise SyscallError("map %s: %s" % (self.name, what), errno.EBADF, "map is closed")

    def _key(self, key, what):
        key = bytes(key)
        if len(key) != self.key_size:
            raise SyscallError("map %s: %s" % (self.name, what), errno.EINVAL,
                               "key is %d bytes, map wants %d" % (len(key), self.key_size))
        return ctypes.create_string_buffer(key, len(key) or 1)

    def _value_len(self):
        if self.type in sys.PERCPU_MAP_TYPES:
            return _round8(self.value_size) * possible_cpus()
        return self.value_size

    def lookup(self, key):
        """The value stored at key (bytes), or None if there is none."""
        self._check_open("lookup")
        k = self._key(key, "lookup")
        n = self._value_len()
        v = ctypes.create_string_buffer(n or 1)
        attr = sys.MapElemAttr(map_fd=self.fd, key=sys.addr(k), value=sys.addr(v))
        try:
            sys.bpf(sys.BPF_MAP_LOOKUP_ELEM, attr, "map %s: lookup" % self.name)
        except SyscallError as e:
            if e.errno == errno.ENOENT:
                return None
            raise
        return v.raw[:n]

    def update(self, key, value, flags=sys.BPF_ANY):
        self._check_open("update")
        k = self._key(key, "update")
        value = bytes(value)
        if len(value) != self._value_len():
            raise SyscallError("map %s: update" % self.name, errno.EINVAL,
                               "value is %d bytes, map wants %d" % (len(value), self._value_len()))
        v = ctypes.create_string_buffer(value, len(value) or 1)
        attr = sys.MapElemAttr(map_fd=self.fd, key=sys.addr(k), value=sys.addr(v), flags=flags)
        sys.bpf(sys.BPF_MAP_UPDATE_ELEM, attr, "map %s: update" % self.name)

    def delete(self, key):
        """Remove key; raises SyscallError (ENOENT) if it is absent."""
        self._check_open("delete")
        k = self._key(key, "delete")
        attr = sys.MapElemAttr(map_fd=self.fd, key=sys.addr(k))
        sys.bpf(sys.BPF_MAP_DELETE_ELEM, attr, "map %s: delete" % self.name)

    def keys(self):
        """Iterate over the keys (bytes) via BPF_MAP_GET_NEXT_KEY."""
        self._check_open("keys")
        prev = None
        nxt = ctypes.create_string_buffer(self.key_size or 1)
        while True:
            attr = sys.MapElemAttr(map_fd=self.fd, key=sys.addr(prev), next_key=sys.addr(nxt))
            try:
                sys.bpf(sys.BPF_MAP_GET_NEXT_KEY, attr, "map %s: next key" % self.name)
            except SyscallError as e:
                if e.errno == errno.ENOENT:
                    return
                raise
            key = nxt.raw[:self.key_size]
            yield key
            prev = ctypes.create_string_buffer(key, self.key_size or 1)

    def items(self):
        """Iterate over (key, value); keys deleted meanwhile are skipped."""
        for k in self.keys():
            v = self.lookup(k)
            if v is not None:
                yield k, v

    def freeze(self):
        """Make the map read-only for userspace (BPF_MAP_FREEZE, Linux 5.2)."""
        self._check_open("freeze")
        sys.bpf(sys.BPF_MAP_FREEZE, sys.MapElemAttr(map_fd=self.fd), "map %s: freeze" % self.name)
        self._frozen = True

    # --- shared memory --------------------------------------------------------------
    def mmap_size(self):
        size = _round8(self.value_size) * self.max_entries
        page = _mmap.PAGESIZE
        return max(page, (size + page - 1) // page * page)

    def mmap(self):
        """A memoryview of a BPF_F_MMAPABLE array's values (Linux 5.5).

        Writable unless the map is frozen or read-only to userspace.  Views
        handed out are released by close(); release any view you derive from
        them (e.g. ``.cast('Q')``) before closing the map.
        """
        what = "map %s: mmap" % self.name
        self._check_open("mmap")
        if self.type != sys.BPF_MAP_TYPE_ARRAY or not self.flags & sys.BPF_F_MMAPABLE:
            raise SyscallError(what, errno.EINVAL, "not a BPF_F_MMAPABLE array")
        if self._mmap is None:
            ro = self._frozen or self.flags & sys.BPF_F_RDONLY
            prot = _mmap.PROT_READ | (0 if ro else _mmap.PROT_WRITE)
            try:
                self._mmap = _mmap.mmap(self.fd, self.mmap_size(), _mmap.MAP_SHARED, prot)
            except PermissionError:
                # Frozen by someone else (e.g. a pinned .rodata): map it read-only.
                try:
                    self._mmap = _mmap.mmap(self.fd, self.mmap_size(), _mmap.MAP_SHARED,
                                            _mmap.PROT_READ)
                except OSError as e:
                    raise SyscallError(what, e.errno) from None
            except OSError as e:
                raise SyscallError(what, e.errno) from None
        view = memoryview(self._mmap)
        self._views.append(view)
        return view

    # --- pinning and lifetime -------------------------------------------------------
    def pin(self, path):
        self._check_open("pin")
        FD.pin(self, path)

    def close(self):
        """Release the mapping and the fd; safe to call twice."""
        views, self._views = self._views, []
        for v in views:
            v.release()
        m, self._mmap = self._mmap, None
        fd, self.fd = self.fd, -1
        busy = False
        if m is not None:
            try:
                m.close()
            except BufferError:
                busy = True   # unmapped when the last derived view goes
        if fd >= 0:
            os.close(fd)
        if busy:
            raise BPFError("map %s: close: views derived from mmap() are still alive"
                           % self.name)

    def __repr__(self):
        return "Map(%r, fd=%d, type=%d, key=%d, value=%d, entries=%d)" % (
            self.name, self.fd, self.type, self.key_size, self.value_size, self.max_entries)
