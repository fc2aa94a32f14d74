"""Loading a CollectionSpec into the kernel: BTF, maps, global data, programs, pins.

The order follows libbpf's bpf_object__load: CO-RE relocation against the running
kernel's BTF, the object's BTF (sanitized only if the kernel refuses it), maps and
their initial contents, then programs with map fds patched in.  A failure closes
everything already created.
"""

import errno
import os
import struct

from . import btf as _btf
from . import core as _core
from . import pin as _pin
from . import sys as _sys
from .errors import BPFError, SyscallError, VerifierError
from .maps import Map
from .prog import Program

_IMM = struct.Struct("<i")
# How the verifier prints libbpf's poison, a call to helper 0xbad2310 (core.POISON_IMM).
_POISON_CALL = ": (85) call unknown#%d" % _core.POISON_IMM


class Collection:
    """Loaded maps and programs by name; close() (or `with`) releases every fd."""

    def __init__(self):
        self.maps = {}
        self.programs = {}
        self.btf_fd = None
        self.borrowed = set()     # maps passed in by the caller: theirs to close

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        maps = [m for n, m in self.maps.items() if n not in self.borrowed]
        for obj in list(self.programs.values()) + maps:
            obj.close()
        if self.btf_fd is not None:
            os.close(self.btf_fd)
            self.btf_fd = None

    def pin(self, directory):
        """Pin programs at DIR/<name> and maps at DIR/maps/<name>, as bpftool loadall does.

        All or nothing: on failure the pins made so far are removed.
        """
        done = []
        try:
            os.makedirs(os.path.join(directory, "maps"), exist_ok=True)
            for name, p in self.programs.items():
                path = os.path.join(directory, name)
                p.pin(path)
                done.append(path)
            for name, m in self.maps.items():
                path = os.path.join(directory, "maps", pin_name(name))
                m.pin(path)
                done.append(path)
        except BaseException:
            for path in done:
                _unlink(path)
            raise
        return done


def pin_name(name):
    """bpffs refuses '.' in names (kernel bpf_lookup()): "x.rodata" pins as "x_rodata",
    as libbpf does, so pins match bpftool's."""
    return name.replace(".", "_")


def load(spec, pin_root="/sys/fs/bpf", kernel_btf=None, maps=None, programs=None):
    """Load `spec` (left unchanged) and return a Collection.

    maps={name: Map} uses existing maps instead of creating those (cilium/ebpf's
    MapReplacements): two loads of one object can share state.  They must match
    the definition; the caller keeps ownership.
    programs=[names] loads only those programs (libbpf's autoload): an object can
    carry a program an older kernel's verifier rejects, for use where it loads.
    """
    from . import features
    features.bump_memlock()
    spec = spec.copy()
    if programs is not None:
        unknown = set(programs) - set(spec.programs)
        if unknown:
            raise BPFError("no program named %s" % ", ".join(sorted(unknown)))
        spec.programs = {n: p for n, p in spec.programs.items() if n in programs}
    coll = Collection()
    try:
        poisons = _relocate_core(spec, kernel_btf)
        coll.btf_fd = _load_btf(spec.btf)
        for name, m in (maps or {}).items():
            ms = spec.maps.get(name)
            if ms is None or not _compatible(m, ms):
                raise BPFError("map %s: replacement does not match the definition" % name)
            coll.maps[name] = m
            coll.borrowed.add(name)
        _create_maps(spec, coll, pin_root)
        for name, prog in spec.programs.items():
            coll.programs[name] = _load_program(prog, coll, poisons.get(name, ()))
    except BaseException:
        coll.close()
        raise
    return coll


def _relocate_core(spec, kernel_btf):
    poisons = {}
    progs = [p for p in spec.programs.values() if p.core_relos]
    if not progs:
        return poisons
    target = kernel_btf or _btf.load_kernel_spec()
    for p in progs:
        try:
            poisons[p.name] = _core.relocate(p.insns, p.core_relos, spec.btf, target)
        except BPFError as e:
            raise e.add_context("program %s: CO-RE" % p.name)
    return poisons


def _load_btf(spec):
    """The object's BTF as an fd, or None if the kernel takes neither it nor a
    sanitized copy (libbpf then loads without BTF too)."""
    if spec is None:
        return None
    try:
        return _sys.btf_load(spec.marshal())
    except SyscallError as e:
        if e.errno not in (errno.EINVAL, errno.E2BIG, errno.ENOTSUP):
            raise
    from . import features
    unsupported = {k for k in _btf.SANITIZABLE_KINDS
                   if not features.has_btf_kind(_btf.probe_blob(k))}
    try:
        return _sys.btf_load(_btf.sanitize(spec, unsupported).marshal())
    except SyscallError:
        return None


def _kernel_name(name):
    return name[:_sys.BPF_OBJ_NAME_LEN - 1]


def _create_map(ms, btf_fd, inner_fd=0):
    args = dict(flags=ms.flags, inner_map_fd=inner_fd, map_extra=ms.map_extra)
    if btf_fd is not None and (ms.key_type_id or ms.value_type_id):
        try:
            return Map.create(_kernel_name(ms.name), ms.type, ms.key_size, ms.value_size,
                              ms.max_entries, btf_fd=btf_fd, btf_key_type_id=ms.key_type_id,
                              btf_value_type_id=ms.value_type_id, **args)
        except SyscallError as e:
            if e.errno != errno.EINVAL:
                raise
            # Some map types take no BTF on some kernels: libbpf retries without.
    return Map.create(_kernel_name(ms.name), ms.type, ms.key_size, ms.value_size,
                      ms.max_entries, **args)


def _compatible(m, ms):
    return (m.type, m.key_size, m.value_size, m.max_entries, m.flags) == \
        (ms.type, ms.key_size, ms.value_size, ms.max_entries, ms.flags)


def _create_maps(spec, coll, pin_root):
    # Maps that hold other maps come last, so their initial slots can be filled.
    for ms in sorted(spec.maps.values(), key=lambda m: m.inner is not None):
        if ms.name in coll.maps:
            continue
        try:
            coll.maps[ms.name] = _create_one(ms, spec, coll, pin_root)
        except BPFError as e:
            raise e.add_context("map " + ms.name)


def _create_one(ms, spec, coll, pin_root):
    path = os.path.join(pin_root, pin_name(ms.name)) if ms.pinning else None
    if path and os.path.exists(path):
        m = Map.from_pin(path)
        if not _compatible(m, ms):
            m.close()
            raise BPFError("pinned map at %s does not match the definition" % path)
        return m     # reused as is: its contents belong to whoever pinned it
    inner = None
    if ms.inner is not None:
        inner = _create_map(ms.inner, coll.btf_fd)
    try:
        m = _create_map(ms, coll.btf_fd, inner.fd if inner else 0)
    finally:
        if inner is not None:
            inner.close()    # the kernel keeps the template's shape, not the map
    try:
        if ms.data is not None and any(ms.data):
            m.update(b"\0\0\0\0", bytes(ms.data))
        if ms.freeze:
            m.freeze()
        for slot, name in sorted(ms.contents.items()):
            m.update(slot.to_bytes(ms.key_size, "little"),
                     coll.maps[name].fd.to_bytes(4, "little"))
        if path:
            _pin.ensure_bpffs(pin_root)
            m.pin(path)
    except BaseException:
        m.close()
        raise
    return m


def _load_program(ps, coll, poisons):
    insns = ps.insns
    for ref in ps.map_refs:
        at = ref.insn * 8
        fd = coll.maps[ref.map].fd
        insns[at + 1] = (insns[at + 1] & 0x0F) | (ref.kind << 4)
        _IMM.pack_into(insns, at + 4, fd)
        _IMM.pack_into(insns, at + 12, ref.offset)
    kw = {}
    if coll.btf_fd is not None and ps.func_info:
        kw = dict(btf_fd=coll.btf_fd, func_info=b"".join(ps.func_info),
                  func_info_rec_size=ps.func_info_rec_size,
                  line_info=b"".join(ps.line_info),
                  line_info_rec_size=ps.line_info_rec_size)
    try:
        return Program.load(_kernel_name(ps.name), ps.type, bytes(insns), ps.license,
                            expected_attach_type=ps.expected_attach_type or 0,
                            kern_version=ps.kern_version, **kw)
    except VerifierError as e:
        hint = _poison_hint(e.log, poisons)
        if hint:
            raise VerifierError("program %s: load" % ps.name, e.errno, e.log, hint) from None
        raise


def _poison_hint(log, poisons):
    """Name the CO-RE relocation behind a poisoned instruction the verifier hit."""
    why = {p.insn_idx: p.reason for p in poisons}
    for line in log.splitlines():
        idx, sep, rest = line.partition(":")
        if sep and idx.isdigit() and line.startswith(idx + _POISON_CALL) and int(idx) in why:
            return "instruction %s uses a failed CO-RE relocation: %s" % (idx, why[int(idx)])
    return ""


def _unlink(path):
    try:
        os.unlink(path)
    except OSError:
        pass
