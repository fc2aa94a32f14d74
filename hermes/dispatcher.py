"""The kernel side of a pool: the dispatcher loaded, its state, and the sockets.

One Dispatcher per pool: it loads bpf/hermes.bpf.o with the project's loader,
initialises the policy, and puts one listening socket per worker slot into the
REUSEPORT_SOCKARRAY, attaching the program to their reuseport group.  The
launcher uses it; so do tests that need a pool without a launcher.
"""

import os
import socket

from .bpf import SyscallError, features, load_collection
from .layout import Layout
from .state import ENV_OBJ, ENV_SCHED_FD, ENV_SLOT, ENV_WST_FD, SharedState

SO_ATTACH_REUSEPORT_EBPF = 52   # asm-generic/socket.h, Linux 4.6
SO_DETACH_REUSEPORT_BPF = 68    # Linux 5.14


def has_migrate():
    """sk_reuseport/migrate (Linux 5.14), probed: BPF_SK_REUSEPORT_SELECT_OR_MIGRATE
    and md->migrating_sk."""
    return features.supported("sk_reuseport/migrate")


SHARED_MAPS = ("hermes_wst", "hermes_sched", "hermes_stats")


class Dispatcher:
    """One reuseport group (one listening address) steered by the dispatcher.

    share=another Dispatcher makes this one use its Worker Status Table, policy
    and counters: one pool of workers serving several addresses.
    """

    def __init__(self, nr_workers, obj=None, migrate=None, share=None, **policy):
        self.migrate = has_migrate() if migrate is None else migrate
        if self.migrate:
            features.require("sk_reuseport/migrate")
        # Only the program in use is loaded: older verifiers reject the other.
        prog = "hermes_migrate" if self.migrate else "hermes_select"
        if share is not None:
            self.layout = share.layout
            self.coll = load_collection(self.layout.spec, programs=[prog], maps={
                n: share.coll.maps[n] for n in SHARED_MAPS})
        else:
            self.layout = Layout.load(obj)
            self.coll = load_collection(self.layout.spec, programs=[prog])
        try:
            self.state = SharedState.from_collection(self.layout, self.coll)
            if share is None:
                self.state.init_policy(nr_workers, **policy)
            self.prog = self.coll.programs[prog]
        except BaseException:
            self.coll.close()
            raise
        self.nr_workers = nr_workers
        self.sockets = {}          # slot -> socket

    @classmethod
    def from_pins(cls, pin_dir, nr_workers, sockets, obj=None, migrate=None):
        """Re-open a pool another process (a launcher before its re-exec) loaded and
        pinned at pin_dir, with its sockets {slot: socket}: nothing is loaded again,
        and the program stays attached to the sockets' reuseport group."""
        from .bpf.collection import Collection, pin_name
        from .bpf.maps import Map
        from .bpf.prog import Program
        self = cls.__new__(cls)
        self.layout = Layout.load(obj)
        self.coll = Collection()
        try:
            for name in self.layout.spec.maps:
                self.coll.maps[name] = Map.from_pin(os.path.join(pin_dir, "maps",
                                                                 pin_name(name)))
            self.migrate = has_migrate() if migrate is None else migrate
            prog = "hermes_migrate" if self.migrate else "hermes_select"
            self.prog = self.coll.programs[prog] = Program.from_pin(os.path.join(pin_dir, prog))
            self.state = SharedState.from_collection(self.layout, self.coll)
        except BaseException:
            self.coll.close()
            raise
        self.nr_workers = nr_workers
        self.sockets = dict(sockets)
        return self

    def close(self):
        for s in self.sockets.values():
            s.close()
        self.sockets.clear()
        self.state.wst.release()
        self.state.sched.release()
        self.coll.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- sockets -----------------------------------------------------------------------
    def listen(self, host="127.0.0.1", port=0, backlog=1024, slots=None):
        """One SO_REUSEPORT listener per slot on (host, port); returns the port."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        for slot in (range(self.nr_workers) if slots is None else slots):
            s = socket.socket(family, socket.SOCK_STREAM)
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                s.bind((host, port))
                s.listen(backlog)
                port = s.getsockname()[1]
                self.add_socket(slot, s)
            except BaseException:
                s.close()
                raise
        return port

    def add_socket(self, slot, sock):
        """Put a bound SO_REUSEPORT socket in slot `slot` and steer its group."""
        if not 0 <= slot < self.nr_workers:
            raise ValueError("slot %d outside the pool of %d" % (slot, self.nr_workers))
        self.coll.maps["hermes_socks"].update(slot.to_bytes(4, "little"),
                                              sock.fileno().to_bytes(8, "little"))
        # The program belongs to the reuseport group: attaching on any member
        # (re)sets it for all.
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_EBPF, self.prog.fd)
        self.sockets[slot] = sock

    def remove_socket(self, slot):
        """Forget slot's socket (the caller closes it)."""
        self.sockets.pop(slot, None)
        try:
            self.coll.maps["hermes_socks"].delete(slot.to_bytes(4, "little"))
        except SyscallError:
            pass            # a closed socket leaves the array by itself

    def resize(self, n):
        """Grow or shrink the pool (TTIN/TTOU); the state is shared, the size is ours."""
        self.state.set_nr_workers(n)
        self.nr_workers = n

    # --- workers -----------------------------------------------------------------------
    def worker_env(self, slot):
        """(environment, fds to pass) for a worker process in `slot`."""
        wst, sched = self.coll.maps["hermes_wst"], self.coll.maps["hermes_sched"]
        env = {ENV_SLOT: str(slot), ENV_WST_FD: str(wst.fd), ENV_SCHED_FD: str(sched.fd),
               ENV_OBJ: os.path.abspath(self.layout.path)}
        return env, (wst.fd, sched.fd)
