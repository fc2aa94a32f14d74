"""Maps against the running kernel: elements, mmap'd arrays, freeze, pinning."""

import errno
import os
import struct

import pytest

from hermes.bpf import pin, sys
from hermes.bpf.errors import BPFError, SyscallError
from hermes.bpf.maps import Map, possible_cpus


def u32(n):
    return struct.pack("=I", n)


def u64(n):
    return struct.pack("=Q", n)


def test_hash_create_update_lookup_delete_keys(fds):
    with Map.create("test_hash", sys.BPF_MAP_TYPE_HASH, 4, 8, 16) as m:
        assert (m.type, m.key_size, m.value_size, m.max_entries) == (1, 4, 8, 16)
        assert m.lookup(u32(1)) is None
        for i in range(5):
            m.update(u32(i), u64(i * 100))
        assert m.lookup(u32(3)) == u64(300)
        assert sorted(m.keys()) == sorted(u32(i) for i in range(5))
        assert dict(m.items())[u32(4)] == u64(400)
        m.update(u32(3), u64(7), sys.BPF_EXIST)
        assert m.lookup(u32(3)) == u64(7)
        with pytest.raises(SyscallError) as e:
            m.update(u32(3), u64(8), sys.BPF_NOEXIST)
        assert e.value.errno == errno.EEXIST
        assert str(e.value).startswith("map test_hash: update: EEXIST")
        m.delete(u32(3))
        assert m.lookup(u32(3)) is None
        with pytest.raises(SyscallError) as e:
            m.delete(u32(3))
        assert e.value.errno == errno.ENOENT
        assert len(list(m.keys())) == 4


def test_array_lookup_update(fds):
    with Map.create("test_arr", sys.BPF_MAP_TYPE_ARRAY, 4, 4, 3) as m:
        assert [m.lookup(u32(i)) for i in range(3)] == [b"\0" * 4] * 3
        m.update(u32(2), u32(0xdeadbeef))
        assert m.lookup(u32(2)) == u32(0xdeadbeef)
        assert list(m.keys()) == [u32(0), u32(1), u32(2)]
        assert m.lookup(u32(3)) is None    # out of range reads as absent
        with pytest.raises(SyscallError):
            m.update(u32(3), u32(1))


def test_wrong_sizes_are_loader_errors(fds):
    with Map.create("test_sz", sys.BPF_MAP_TYPE_HASH, 4, 8, 1) as m:
        with pytest.raises(BPFError, match="key is 2 bytes, map wants 4"):
            m.lookup(b"ab")
        with pytest.raises(BPFError, match="value is 4 bytes, map wants 8"):
            m.update(u32(0), u32(0))


def test_create_error_has_context(fds):
    with pytest.raises(SyscallError) as e:
        Map.create("test_bad", sys.BPF_MAP_TYPE_HASH, 0, 8, 1)   # zero key size
    assert str(e.value).startswith("map test_bad: create: EINVAL")


def test_percpu_values_have_one_slot_per_cpu(fds):
    n = possible_cpus()
    with Map.create("test_pcpu", sys.BPF_MAP_TYPE_PERCPU_ARRAY, 4, 4, 1) as m:
        val = b"".join(u64(i + 1) for i in range(n))
        m.update(u32(0), val)
        assert m.lookup(u32(0)) == val


def test_mmapable_array_shares_memory_both_ways(fds):
    with Map.create("test_mm", sys.BPF_MAP_TYPE_ARRAY, 4, 8, 4, sys.BPF_F_MMAPABLE) as m:
        view = m.mmap()
        assert len(view) == 4096 and m.mmap_size() == 4096
        q = view.cast("Q")
        q[1] = 0x1122334455667788
        assert m.lookup(u32(1)) == u64(0x1122334455667788)   # store seen at once
        m.update(u32(3), u64(42))
        assert q[3] == 42                                     # and the other way
        q.release()


def test_mmap_size_rounds_values_to_8_and_pages():
    m = Map(-1, "x", sys.BPF_MAP_TYPE_ARRAY, 4, 12, 1000, sys.BPF_F_MMAPABLE)
    assert m.mmap_size() == 16 * 1000 // 4096 * 4096 + 4096


def test_close_releases_mmap_and_fd_and_is_idempotent(fds):
    m = Map.create("test_cl", sys.BPF_MAP_TYPE_ARRAY, 4, 8, 1, sys.BPF_F_MMAPABLE)
    view = m.mmap()
    m.close()
    assert m.fd == -1
    with pytest.raises(ValueError):
        view[0]                 # released, not a dangling mapping
    m.close()
    with pytest.raises(SyscallError):
        m.lookup(u32(0))


def test_close_with_live_derived_view_still_closes_fd(fds):
    m = Map.create("test_cl2", sys.BPF_MAP_TYPE_ARRAY, 4, 8, 1, sys.BPF_F_MMAPABLE)
    q = m.mmap().cast("Q")
    with pytest.raises(BPFError, match="still alive"):
        m.close()
    assert m.fd == -1
    q[0] = 1                    # the mapping stays valid while the view lives
    q.release()                 # ... and goes with it (fds fixture checks)


def test_mmap_needs_mmapable_array(fds):
    with Map.create("test_nomm", sys.BPF_MAP_TYPE_ARRAY, 4, 8, 1) as m:
        with pytest.raises(SyscallError, match="not a BPF_F_MMAPABLE array"):
            m.mmap()


def test_frozen_map_rejects_update_and_maps_read_only(fds):
    with Map.create("test_frz", sys.BPF_MAP_TYPE_ARRAY, 4, 8, 2, sys.BPF_F_MMAPABLE) as m:
        m.update(u32(0), u64(9))
        m.freeze()
        with pytest.raises(SyscallError) as e:
            m.update(u32(0), u64(10))
        assert e.value.errno == errno.EPERM
        assert m.lookup(u32(0)) == u64(9)
        view = m.mmap()
        assert view.readonly and view.cast("Q")[0] == 9


def test_pin_and_from_pin_round_trip(pin_dir, fds):
    path = os.path.join(pin_dir, "m")
    with Map.create("test_pin", sys.BPF_MAP_TYPE_HASH, 4, 8, 4) as m:
        m.update(u32(1), u64(11))
        m.pin(path)
    # The pin keeps the map alive after our fd is gone.
    with Map.from_pin(path) as m2:
        assert (m2.name, m2.type, m2.key_size, m2.value_size, m2.max_entries) == \
            ("test_pin", sys.BPF_MAP_TYPE_HASH, 4, 8, 4)
        assert m2.lookup(u32(1)) == u64(11)
    os.unlink(path)
    with pytest.raises(SyscallError) as e:
        pin.get(path)
    assert e.value.errno == errno.ENOENT and path in str(e.value)


def test_pin_helpers(pin_dir, fds):
    pin.ensure_bpffs()                  # already mounted: a no-op
    assert pin.fs_magic("/sys/fs/bpf") == pin.BPF_FS_MAGIC
    d = os.path.join(pin_dir, "a", "b")
    pin.makedirs(d)
    assert os.path.isdir(d)
    with Map.create("test_pin2", sys.BPF_MAP_TYPE_ARRAY, 4, 4, 1) as m:
        pin.pin(m.fd, os.path.join(d, "x"))
        with pytest.raises(SyscallError) as e:
            pin.pin(m.fd, os.path.join(d, "x"))
        assert e.value.errno == errno.EEXIST
        ro = Map.from_fd(pin.get(os.path.join(d, "x"), sys.BPF_F_RDONLY))
        with ro:
            with pytest.raises(SyscallError):
                ro.update(u32(0), u32(1))   # read-only fd
            assert ro.lookup(u32(0)) == u32(0)
