"""bpf(2) through ctypes: the syscall, one Structure per command's view of
union bpf_attr, and the UAPI constants.

Layouts follow include/uapi/linux/bpf.h as of Linux 6.1 (what Debian 12's
linux-libc-dev ships); newer kernels accept a shorter attr and zero-fill the
rest.  tests/test_sys.py checks every offset against the installed header.
Pointers are passed as u64 (__aligned_u64).
"""

import ctypes
import errno as _errno
import os

from .asm import (  # noqa: F401 -- re-exported: the linker's opcode vocabulary
    BPF_LD, BPF_LDX, BPF_ST, BPF_STX, BPF_ALU, BPF_JMP, BPF_JMP32, BPF_ALU64,
    BPF_W, BPF_H, BPF_B, BPF_DW, BPF_IMM, BPF_MEM, BPF_ATOMIC, BPF_K, BPF_X,
    BPF_MOV, BPF_ADD, BPF_CALL, BPF_EXIT, BPF_JA, LD_IMM64, CALL, EXIT,
    BPF_PSEUDO_MAP_FD, BPF_PSEUDO_MAP_VALUE, BPF_PSEUDO_BTF_ID, BPF_PSEUDO_FUNC,
    BPF_PSEUDO_MAP_IDX, BPF_PSEUDO_MAP_IDX_VALUE, BPF_PSEUDO_CALL,
    BPF_PSEUDO_KFUNC_CALL, INSN_SIZE,
)
from .errors import SyscallError

# --- commands (enum bpf_cmd) -------------------------------------------------
_before_cmds = set(globals())
BPF_MAP_CREATE = 0
BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_DELETE_ELEM = 3
BPF_MAP_GET_NEXT_KEY = 4
BPF_PROG_LOAD = 5
BPF_OBJ_PIN = 6
BPF_OBJ_GET = 7
BPF_PROG_ATTACH = 8
BPF_PROG_DETACH = 9
BPF_PROG_TEST_RUN = 10
BPF_PROG_GET_NEXT_ID = 11
BPF_MAP_GET_NEXT_ID = 12
BPF_PROG_GET_FD_BY_ID = 13
BPF_MAP_GET_FD_BY_ID = 14
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_PROG_QUERY = 16
BPF_RAW_TRACEPOINT_OPEN = 17
BPF_BTF_LOAD = 18
BPF_BTF_GET_FD_BY_ID = 19
BPF_TASK_FD_QUERY = 20
BPF_MAP_LOOKUP_AND_DELETE_ELEM = 21
BPF_MAP_FREEZE = 22          # Linux 5.2
BPF_BTF_GET_NEXT_ID = 23
BPF_MAP_LOOKUP_BATCH = 24
BPF_MAP_LOOKUP_AND_DELETE_BATCH = 25
BPF_MAP_UPDATE_BATCH = 26
BPF_MAP_DELETE_BATCH = 27
BPF_LINK_CREATE = 28         # Linux 5.7
BPF_LINK_UPDATE = 29
BPF_LINK_GET_FD_BY_ID = 30
BPF_LINK_GET_NEXT_ID = 31
BPF_ENABLE_STATS = 32        # Linux 5.8
BPF_ITER_CREATE = 33
BPF_LINK_DETACH = 34
BPF_PROG_BIND_MAP = 35       # Linux 5.10
BPF_TOKEN_CREATE = 36        # Linux 6.9

CMD_NAMES = {globals()[k]: k for k in set(globals()) - _before_cmds if k.startswith("BPF_")}

# --- map types (enum bpf_map_type) ---------------------------------------------
BPF_MAP_TYPE_UNSPEC = 0
BPF_MAP_TYPE_HASH = 1
BPF_MAP_TYPE_ARRAY = 2
BPF_MAP_TYPE_PROG_ARRAY = 3
BPF_MAP_TYPE_PERF_EVENT_ARRAY = 4
BPF_MAP_TYPE_PERCPU_HASH = 5
BPF_MAP_TYPE_PERCPU_ARRAY = 6
BPF_MAP_TYPE_STACK_TRACE = 7
BPF_MAP_TYPE_CGROUP_ARRAY = 8
BPF_MAP_TYPE_LRU_HASH = 9
BPF_MAP_TYPE_LRU_PERCPU_HASH = 10
BPF_MAP_TYPE_LPM_TRIE = 11
BPF_MAP_TYPE_ARRAY_OF_MAPS = 12
BPF_MAP_TYPE_HASH_OF_MAPS = 13
BPF_MAP_TYPE_DEVMAP = 14
BPF_MAP_TYPE_SOCKMAP = 15
BPF_MAP_TYPE_CPUMAP = 16
BPF_MAP_TYPE_XSKMAP = 17
BPF_MAP_TYPE_SOCKHASH = 18
BPF_MAP_TYPE_CGROUP_STORAGE = 19
BPF_MAP_TYPE_REUSEPORT_SOCKARRAY = 20   # Linux 4.19
BPF_MAP_TYPE_PERCPU_CGROUP_STORAGE = 21
BPF_MAP_TYPE_QUEUE = 22
BPF_MAP_TYPE_STACK = 23
BPF_MAP_TYPE_SK_STORAGE = 24
BPF_MAP_TYPE_DEVMAP_HASH = 25
BPF_MAP_TYPE_STRUCT_OPS = 26
BPF_MAP_TYPE_RINGBUF = 27               # Linux 5.8
BPF_MAP_TYPE_INODE_STORAGE = 28
BPF_MAP_TYPE_TASK_STORAGE = 29
BPF_MAP_TYPE_BLOOM_FILTER = 30          # Linux 5.16
BPF_MAP_TYPE_USER_RINGBUF = 31          # Linux 6.1
BPF_MAP_TYPE_CGRP_STORAGE = 32          # Linux 6.2
BPF_MAP_TYPE_ARENA = 33                 # Linux 6.9

# Per-CPU maps exchange one value slot (rounded to 8) per possible CPU.
PERCPU_MAP_TYPES = frozenset((BPF_MAP_TYPE_PERCPU_HASH, BPF_MAP_TYPE_PERCPU_ARRAY,
                              BPF_MAP_TYPE_LRU_PERCPU_HASH,
                              BPF_MAP_TYPE_PERCPU_CGROUP_STORAGE))

# --- program types (enum bpf_prog_type) ----------------------------------------
BPF_PROG_TYPE_UNSPEC = 0
BPF_PROG_TYPE_SOCKET_FILTER = 1
BPF_PROG_TYPE_KPROBE = 2
BPF_PROG_TYPE_SCHED_CLS = 3
BPF_PROG_TYPE_SCHED_ACT = 4
BPF_PROG_TYPE_TRACEPOINT = 5
BPF_PROG_TYPE_XDP = 6
BPF_PROG_TYPE_PERF_EVENT = 7
BPF_PROG_TYPE_CGROUP_SKB = 8
BPF_PROG_TYPE_CGROUP_SOCK = 9
BPF_PROG_TYPE_LWT_IN = 10
BPF_PROG_TYPE_LWT_OUT = 11
BPF_PROG_TYPE_LWT_XMIT = 12
BPF_PROG_TYPE_SOCK_OPS = 13
BPF_PROG_TYPE_SK_SKB = 14
BPF_PROG_TYPE_CGROUP_DEVICE = 15
BPF_PROG_TYPE_SK_MSG = 16
BPF_PROG_TYPE_RAW_TRACEPOINT = 17
BPF_PROG_TYPE_CGROUP_SOCK_ADDR = 18
BPF_PROG_TYPE_LWT_SEG6LOCAL = 19
BPF_PROG_TYPE_LIRC_MODE2 = 20
BPF_PROG_TYPE_SK_REUSEPORT = 21         # Linux 4.19
BPF_PROG_TYPE_FLOW_DISSECTOR = 22
BPF_PROG_TYPE_CGROUP_SYSCTL = 23
BPF_PROG_TYPE_RAW_TRACEPOINT_WRITABLE = 24
BPF_PROG_TYPE_CGROUP_SOCKOPT = 25
BPF_PROG_TYPE_TRACING = 26
BPF_PROG_TYPE_STRUCT_OPS = 27
BPF_PROG_TYPE_EXT = 28
BPF_PROG_TYPE_LSM = 29
BPF_PROG_TYPE_SK_LOOKUP = 30
BPF_PROG_TYPE_SYSCALL = 31
BPF_PROG_TYPE_NETFILTER = 32            # Linux 6.4

# --- attach types (enum bpf_attach_type) ---------------------------------------
_before_attach = set(globals())
BPF_CGROUP_INET_INGRESS = 0
BPF_CGROUP_INET_EGRESS = 1
BPF_CGROUP_INET_SOCK_CREATE = 2
BPF_CGROUP_SOCK_OPS = 3
BPF_SK_SKB_STREAM_PARSER = 4
BPF_SK_SKB_STREAM_VERDICT = 5
BPF_CGROUP_DEVICE = 6
BPF_SK_MSG_VERDICT = 7
BPF_CGROUP_INET4_BIND = 8
BPF_CGROUP_INET6_BIND = 9
BPF_CGROUP_INET4_CONNECT = 10
BPF_CGROUP_INET6_CONNECT = 11
BPF_CGROUP_INET4_POST_BIND = 12
BPF_CGROUP_INET6_POST_BIND = 13
BPF_CGROUP_UDP4_SENDMSG = 14
BPF_CGROUP_UDP6_SENDMSG = 15
BPF_LIRC_MODE2 = 16
BPF_FLOW_DISSECTOR = 17
BPF_CGROUP_SYSCTL = 18
BPF_CGROUP_UDP4_RECVMSG = 19
BPF_CGROUP_UDP6_RECVMSG = 20
BPF_CGROUP_GETSOCKOPT = 21
BPF_CGROUP_SETSOCKOPT = 22
BPF_TRACE_RAW_TP = 23
BPF_TRACE_FENTRY = 24
BPF_TRACE_FEXIT = 25
BPF_MODIFY_RETURN = 26
BPF_LSM_MAC = 27
BPF_TRACE_ITER = 28
BPF_CGROUP_INET4_GETPEERNAME = 29
BPF_CGROUP_INET6_GETPEERNAME = 30
BPF_CGROUP_INET4_GETSOCKNAME = 31
BPF_CGROUP_INET6_GETSOCKNAME = 32
BPF_XDP_DEVMAP = 33
BPF_CGROUP_INET_SOCK_RELEASE = 34
BPF_XDP_CPUMAP = 35
BPF_SK_LOOKUP = 36
BPF_XDP = 37
BPF_SK_SKB_VERDICT = 38
BPF_SK_REUSEPORT_SELECT = 39            # Linux 5.14
BPF_SK_REUSEPORT_SELECT_OR_MIGRATE = 40  # Linux 5.14
BPF_PERF_EVENT = 41
BPF_TRACE_KPROBE_MULTI = 42
BPF_LSM_CGROUP = 43
BPF_STRUCT_OPS = 44                     # Linux 6.4
BPF_NETFILTER = 45                      # Linux 6.4
BPF_TCX_INGRESS = 46                    # Linux 6.6
BPF_TCX_EGRESS = 47
BPF_TRACE_UPROBE_MULTI = 48             # Linux 6.6
BPF_CGROUP_UNIX_CONNECT = 49            # Linux 6.7
BPF_CGROUP_UNIX_SENDMSG = 50
BPF_CGROUP_UNIX_RECVMSG = 51
BPF_CGROUP_UNIX_GETPEERNAME = 52
BPF_CGROUP_UNIX_GETSOCKNAME = 53
BPF_NETKIT_PRIMARY = 54                 # Linux 6.7
BPF_NETKIT_PEER = 55
BPF_TRACE_KPROBE_SESSION = 56           # Linux 6.10

ATTACH_NAMES = {globals()[k]: k for k in set(globals()) - _before_attach if k.startswith("BPF_")}

# --- flags -----------------------------------------------------------------
# BPF_MAP_UPDATE_ELEM
BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2
BPF_F_LOCK = 4                 # Linux 5.1
# BPF_MAP_CREATE map_flags
BPF_F_NO_PREALLOC = 1 << 0
BPF_F_NO_COMMON_LRU = 1 << 1
BPF_F_NUMA_NODE = 1 << 2
BPF_F_RDONLY = 1 << 3          # also OBJ_GET file_flags
BPF_F_WRONLY = 1 << 4
BPF_F_STACK_BUILD_ID = 1 << 5
BPF_F_ZERO_SEED = 1 << 6
BPF_F_RDONLY_PROG = 1 << 7     # Linux 5.2
BPF_F_WRONLY_PROG = 1 << 8
BPF_F_CLONE = 1 << 9
BPF_F_MMAPABLE = 1 << 10       # Linux 5.5
BPF_F_PRESERVE_ELEMS = 1 << 11
BPF_F_INNER_MAP = 1 << 12
# BPF_PROG_LOAD prog_flags
BPF_F_STRICT_ALIGNMENT = 1 << 0
BPF_F_ANY_ALIGNMENT = 1 << 1
BPF_F_TEST_RND_HI32 = 1 << 2
BPF_F_TEST_STATE_FREQ = 1 << 3
BPF_F_SLEEPABLE = 1 << 4
BPF_F_XDP_HAS_FRAGS = 1 << 5
# BPF_PROG_ATTACH attach_flags
BPF_F_ALLOW_OVERRIDE = 1 << 0
BPF_F_ALLOW_MULTI = 1 << 1
BPF_F_REPLACE = 1 << 2
# BPF_PROG_TEST_RUN flags
BPF_F_TEST_RUN_ON_CPU = 1 << 0
# BPF_ENABLE_STATS type
BPF_STATS_RUN_TIME = 0

BPF_OBJ_NAME_LEN = 16
BPF_TAG_SIZE = 8
# Verifier log levels; the kernel refuses log_size < 128 or > UINT_MAX >> 2.
BPF_LOG_LEVEL1 = 1
BPF_LOG_LEVEL2 = 2
BPF_LOG_STATS = 4
LOG_SIZE_MIN = 128
LOG_SIZE_MAX = 0xffffffff >> 2

# --- attr structures -----------------------------------------------------------
# Each names where it lives inside union bpf_attr (_c_path_, "" for anonymous
# members) so the layout test can ask the compiler for the real offsets.
u8, u32, u64 = ctypes.c_uint8, ctypes.c_uint32, ctypes.c_uint64
_NAME = ctypes.c_char * BPF_OBJ_NAME_LEN


class _Attr(ctypes.Structure):
    _c_path_ = ""


class MapCreateAttr(_Attr):
    _fields_ = [
        ("map_type", u32), ("key_size", u32), ("value_size", u32), ("max_entries", u32),
        ("map_flags", u32), ("inner_map_fd", u32), ("numa_node", u32),
        ("map_name", _NAME), ("map_ifindex", u32), ("btf_fd", u32),
        ("btf_key_type_id", u32), ("btf_value_type_id", u32),
        ("btf_vmlinux_value_type_id", u32), ("map_extra", u64),
    ]


class _KeyValue(ctypes.Union):
    _fields_ = [("value", u64), ("next_key", u64)]


class MapElemAttr(_Attr):
    """MAP_LOOKUP/UPDATE/DELETE_ELEM, GET_NEXT_KEY, and MAP_FREEZE (map_fd only)."""
    _anonymous_ = ("_u",)
    _fields_ = [("map_fd", u32), ("key", u64), ("_u", _KeyValue), ("flags", u64)]


class ProgLoadAttr(_Attr):
    _fields_ = [
        ("prog_type", u32), ("insn_cnt", u32), ("insns", u64), ("license", u64),
        ("log_level", u32), ("log_size", u32), ("log_buf", u64),
        ("kern_version", u32), ("prog_flags", u32), ("prog_name", _NAME),
        ("prog_ifindex", u32), ("expected_attach_type", u32), ("prog_btf_fd", u32),
        ("func_info_rec_size", u32), ("func_info", u64), ("func_info_cnt", u32),
        ("line_info_rec_size", u32), ("line_info", u64), ("line_info_cnt", u32),
        ("attach_btf_id", u32), ("attach_prog_fd", u32),  # union with attach_btf_obj_fd
        ("core_relo_cnt", u32), ("fd_array", u64), ("core_relos", u64),
        ("core_relo_rec_size", u32),
    ]


class ObjAttr(_Attr):
    """OBJ_PIN / OBJ_GET."""
    _fields_ = [("pathname", u64), ("bpf_fd", u32), ("file_flags", u32)]


class ProgAttachAttr(_Attr):
    """PROG_ATTACH / PROG_DETACH."""
    _fields_ = [("target_fd", u32), ("attach_bpf_fd", u32), ("attach_type", u32),
                ("attach_flags", u32), ("replace_bpf_fd", u32)]


class TestRunAttr(_Attr):
    _c_path_ = "test"
    _fields_ = [
        ("prog_fd", u32), ("retval", u32), ("data_size_in", u32), ("data_size_out", u32),
        ("data_in", u64), ("data_out", u64), ("repeat", u32), ("duration", u32),
        ("ctx_size_in", u32), ("ctx_size_out", u32), ("ctx_in", u64), ("ctx_out", u64),
        ("flags", u32), ("cpu", u32), ("batch_size", u32),
    ]


class GetIdAttr(_Attr):
    """*_GET_NEXT_ID / *_GET_FD_BY_ID; start_id shares its slot with prog_id, map_id..."""
    _fields_ = [("start_id", u32), ("next_id", u32), ("open_flags", u32)]


class InfoAttr(_Attr):
    _c_path_ = "info"
    _fields_ = [("bpf_fd", u32), ("info_len", u32), ("info", u64)]


class BtfLoadAttr(_Attr):
    _fields_ = [("btf", u64), ("btf_log_buf", u64), ("btf_size", u32),
                ("btf_log_size", u32), ("btf_log_level", u32)]


class _LinkIter(ctypes.Structure):
    _fields_ = [("iter_info", u64), ("iter_info_len", u32)]


class _LinkPerfEvent(ctypes.Structure):
    _fields_ = [("bpf_cookie", u64)]


class _LinkKprobeMulti(ctypes.Structure):
    _fields_ = [("flags", u32), ("cnt", u32), ("syms", u64), ("addrs", u64), ("cookies", u64)]


class _LinkTracing(ctypes.Structure):
    _fields_ = [("target_btf_id", u32), ("cookie", u64)]


class _LinkTarget(ctypes.Union):
    _anonymous_ = ("_iter",)
    _fields_ = [("target_btf_id", u32), ("_iter", _LinkIter), ("perf_event", _LinkPerfEvent),
                ("kprobe_multi", _LinkKprobeMulti), ("tracing", _LinkTracing)]


class LinkCreateAttr(_Attr):
    _c_path_ = "link_create"
    _anonymous_ = ("_t",)
    _fields_ = [("prog_fd", u32), ("target_fd", u32),  # target_fd: union with target_ifindex
                ("attach_type", u32), ("flags", u32), ("_t", _LinkTarget)]


class EnableStatsAttr(_Attr):
    _c_path_ = "enable_stats"
    _fields_ = [("type", u32)]


ATTRS = (MapCreateAttr, MapElemAttr, ProgLoadAttr, ObjAttr, ProgAttachAttr, TestRunAttr,
         GetIdAttr, InfoAttr, BtfLoadAttr, LinkCreateAttr, EnableStatsAttr)


# --- info structures (BPF_OBJ_GET_INFO_BY_FD) ----------------------------------
class MapInfo(ctypes.Structure):
    _c_struct_ = "bpf_map_info"
    _fields_ = [
        ("type", u32), ("id", u32), ("key_size", u32), ("value_size", u32),
        ("max_entries", u32), ("map_flags", u32), ("name", _NAME), ("ifindex", u32),
        ("btf_vmlinux_value_type_id", u32), ("netns_dev", u64), ("netns_ino", u64),
        ("btf_id", u32), ("btf_key_type_id", u32), ("btf_value_type_id", u32),
        ("_pad", u32), ("map_extra", u64),
    ]


class ProgInfo(ctypes.Structure):
    _c_struct_ = "bpf_prog_info"
    _fields_ = [
        ("type", u32), ("id", u32), ("tag", u8 * BPF_TAG_SIZE),
        ("jited_prog_len", u32), ("xlated_prog_len", u32),
        ("jited_prog_insns", u64), ("xlated_prog_insns", u64), ("load_time", u64),
        ("created_by_uid", u32), ("nr_map_ids", u32), ("map_ids", u64), ("name", _NAME),
        ("ifindex", u32), ("gpl_compatible", u32, 1), ("_pad0", u32, 31),
        ("netns_dev", u64), ("netns_ino", u64),
        ("nr_jited_ksyms", u32), ("nr_jited_func_lens", u32),
        ("jited_ksyms", u64), ("jited_func_lens", u64),
        ("btf_id", u32), ("func_info_rec_size", u32), ("func_info", u64),
        ("nr_func_info", u32), ("nr_line_info", u32), ("line_info", u64),
        ("jited_line_info", u64), ("nr_jited_line_info", u32), ("line_info_rec_size", u32),
        ("jited_line_info_rec_size", u32), ("nr_prog_tags", u32), ("prog_tags", u64),
        ("run_time_ns", u64), ("run_cnt", u64), ("recursion_misses", u64),
        ("verified_insns", u32), ("attach_btf_obj_id", u32), ("attach_btf_id", u32),
        ("_pad1", u32),
    ]


class BtfInfo(ctypes.Structure):
    _c_struct_ = "bpf_btf_info"
    _fields_ = [("btf", u64), ("btf_size", u32), ("id", u32), ("name", u64),
                ("name_len", u32), ("kernel_btf", u32)]


INFOS = (MapInfo, ProgInfo, BtfInfo)

# --- the syscall -----------------------------------------------------------------
_NR_BPF = {"x86_64": 321, "aarch64": 280, "arm64": 280}.get(os.uname().machine)
_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_syscall.argtypes = (ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_uint)

# BPF_PROG_LOAD can fail with EAGAIN when the verifier is interrupted; libbpf
# retries a few times, and so do we.
_EAGAIN_RETRIES = 5


def bpf(cmd, attr, op=None):
    """bpf(cmd, &attr, sizeof(attr)) -> the syscall's non-negative result.

    Raises SyscallError(op or the command's name, errno) on failure; callers
    name the object ("map workers: create").
    """
    if _NR_BPF is None:
        raise SyscallError(op or "bpf", _errno.ENOSYS, "bpf(2) number unknown for " +
                           os.uname().machine)
    ptr, size = ctypes.addressof(attr), ctypes.sizeof(attr)
    tries = 0
    while True:
        r = _syscall(_NR_BPF, cmd, ptr, size)
        if r >= 0:
            return r
        err = ctypes.get_errno()
        if err == _errno.EINTR:
            continue
        if err == _errno.EAGAIN and cmd == BPF_PROG_LOAD and tries < _EAGAIN_RETRIES:
            tries += 1
            continue
        raise SyscallError(op or CMD_NAMES.get(cmd, "bpf(%d)" % cmd), err)


def addr(buf):
    """The address of a ctypes buffer as the u64 the kernel wants (0 for None)."""
    return 0 if buf is None else ctypes.addressof(buf)


def obj_name(name):
    """A kernel object name: at most 15 bytes of [A-Za-z0-9_.] (others dropped)."""
    keep = "".join(c for c in name if c.isascii() and (c.isalnum() or c in "_."))
    return keep[:BPF_OBJ_NAME_LEN - 1].encode()


def c_string(s):
    """str/bytes -> a NUL-terminated ctypes buffer that lives as long as it is referenced."""
    if isinstance(s, str):
        s = s.encode()
    return ctypes.create_string_buffer(s)


def obj_info(fd, info, op=None):
    """Fill ``info`` (MapInfo/ProgInfo/BtfInfo instance) for fd; returns it."""
    attr = InfoAttr(bpf_fd=fd, info_len=ctypes.sizeof(info), info=ctypes.addressof(info))
    bpf(BPF_OBJ_GET_INFO_BY_FD, attr, op)
    return info


def log_text(buf):
    """A verifier/BTF log buffer -> str, up to the first NUL."""
    return buf.value.decode("utf-8", "replace")


# The log buffer starts at 64 KiB and grows 4x on ENOSPC up to 16 MiB.
LOG_START = 64 * 1024
LOG_LIMIT = 16 * 1024 * 1024


def with_log(attempt, start=None, quiet_first=True):
    """Run ``attempt(None)`` quietly, then ``attempt(buf)`` with a growing log.

    Returns attempt's result; on failure raises the last SyscallError with
    ``.log`` set to the whole log (the kernel's truncated log if even
    LOG_LIMIT did not hold it).  A log that overflows makes the kernel answer
    ENOSPC whatever the verdict, so ENOSPC means "grow and retry".
    """
    if quiet_first:
        try:
            return attempt(None)
        except SyscallError:
            pass
    size = max(start or LOG_START, LOG_SIZE_MIN)
    while True:
        buf = ctypes.create_string_buffer(size)
        try:
            return attempt(buf)
        except SyscallError as e:
            if e.errno == _errno.ENOSPC and size < LOG_LIMIT:
                size = min(size * 4, LOG_LIMIT)
                continue
            e.log = log_text(buf)
            raise


def btf_load(data, log_level=0):
    """BPF_BTF_LOAD of a raw BTF blob -> fd.

    With log_level 0 the first try is quiet and a failure is retried with a log;
    raises SyscallError("btf: load", errno, <log tail>) whose ``.log`` is the
    whole log.
    """
    blob = ctypes.create_string_buffer(bytes(data), len(data))

    def attempt(buf):
        attr = BtfLoadAttr(btf=addr(blob), btf_size=len(data))
        if buf is not None:
            attr.btf_log_buf, attr.btf_log_size = addr(buf), len(buf)
            attr.btf_log_level = log_level or BPF_LOG_LEVEL1
        return bpf(BPF_BTF_LOAD, attr, "btf: load")

    try:
        return with_log(attempt, quiet_first=not log_level)
    except SyscallError as e:
        log = getattr(e, "log", "")
        tail = " | ".join([l for l in log.splitlines() if l.strip()][-3:])
        err = SyscallError("btf: load", e.errno, tail)
        err.log = log
        raise err from None
