"""The arbiter: owns the sockets and the dispatcher, spawns and supervises workers.

Modelled on gunicorn's arbiter: one thread, a signal queue woken through a
self-pipe, SIGCHLD reaping, respawn with backoff, graceful stop and reload.
"""

import errno
import json
import logging
import os
import select
import shutil
import signal
import socket
import struct
import sys
import time

from .. import __version__, control
from ..state import ENV_OBJ, ENV_SCHED_FD, ENV_SLOT, ENV_WST_FD
from . import sockets as _sockets
from .spawn import demo_argv, package_pythonpath, spawn

log = logging.getLogger("hermes-launch")

QUICK_EXIT_S = 1.0        # a worker dying sooner than this after start "failed to start"
CRASH_LOOP = 5            # that many failed starts in a row: give up
BACKOFF_MAX_S = 5.0
TICK_S = 0.5
HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGTTIN,
           signal.SIGTTOU, signal.SIGUSR1, signal.SIGUSR2, signal.SIGCHLD)
READY_WAIT_S = 5.0        # a reload moves on after this even if a worker never attaches


class LaunchError(Exception):
    """A problem the user can fix: one line, exit status 2."""


class Fatal(Exception):
    """Supervision cannot go on (a crash loop): exit status 1."""


class Slot:
    __slots__ = ("id", "sockets", "pid", "started", "started_ns", "restarts", "failures",
                 "next_start", "last_status")

    def __init__(self, sid, socks):
        self.id = sid
        self.sockets = socks
        self.pid = None
        self.started = 0.0
        self.started_ns = 0
        self.restarts = 0
        self.failures = 0
        self.next_start = 0.0
        self.last_status = None


def describe_status(status):
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            return "killed by %s" % signal.Signals(sig).name
        except ValueError:
            return "killed by signal %d" % sig
    return "exited with status %d" % os.waitstatus_to_exitcode(status)


def sd_notify(msg):
    """sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(msg.encode(), path)
    except OSError as e:
        log.warning("sd_notify: %s", e)


class Arbiter:
    def __init__(self, cfg):
        self.cfg = cfg
        self.slots = []
        self.addresses = []       # (family, host, port) after binding
        self.dispatchers = []
        self.shared = []          # exclusive mode: one socket per address
        self.per_slot = {}        # reuseport mode: slot -> its sockets, one per address
        self.old = {}             # pid -> deadline of workers told to stop
        self.stopping = None      # None | "graceful" | "fast"
        self.reloading = []       # slots still to replace in a HUP reload
        self.reload_wait = None   # (slot, deadline): its new worker is starting
        self.draining = []        # (slot, deadline): removed by TTOU, queue not yet empty
        self.signals = []
        self.ctl = None
        self.pin_dir = None
        self.started = time.monotonic()
        self.wake_r = self.wake_w = None
        self.observer = None
        self.ready_sent = False
        self.upgrades = 0

    # --- set-up and tear-down ------------------------------------------------------------
    def setup(self):
        cfg = self.cfg
        self._claim_name()
        n = cfg.workers
        if cfg.dispatch == "hermes":
            self._setup_hermes(n)
        else:
            for fam, host, port in cfg.listen:
                if cfg.dispatch == "exclusive":
                    s = self._bind(fam, host, port, reuseport=False)
                    self.shared.append(s)
                    port = s.getsockname()[1]
                else:
                    port = self._bind_slots(fam, host, port, n)
                self.addresses.append((fam, host, port))
            for i in range(n):
                self.slots.append(Slot(i, self._slot_sockets(i)))
        if cfg.pidfile:
            _write_atomic(cfg.pidfile, "%d\n" % os.getpid())
        self._open_control()

    def _claim_name(self):
        path = control.socket_path(self.cfg.name)
        if os.path.exists(path):
            try:
                control.request(self.cfg.name, "status")
            except control.ControlError:
                os.unlink(path)       # stale, from a launcher that died
            else:
                raise LaunchError("a launcher named %r is already running (%s); choose "
                                  "another --name" % (self.cfg.name, path))

    def _bind(self, fam, host, port, reuseport):
        try:
            return _sockets.listener(fam, host, port, reuseport, self.cfg.backlog)
        except OSError as e:
            addr = _sockets.format_address(fam, host, port)
            if e.errno == errno.EADDRINUSE:
                raise LaunchError("%s: address already in use" % addr) from None
            if e.errno == errno.EACCES:
                raise LaunchError("%s: permission denied (ports below 1024 need root)"
                                  % addr) from None
            raise LaunchError("%s: %s" % (addr, e.strerror)) from None

    def _bind_slots(self, fam, host, port, n):
        """reuseport mode: one listener per slot, all on one port."""
        socks = self.per_slot
        for i in range(n):
            s = self._bind(fam, host, port, reuseport=True)
            port = s.getsockname()[1]
            socks.setdefault(i, []).append(s)
        return port

    def _setup_hermes(self, n):
        from ..bpf import BPFError
        from ..dispatcher import Dispatcher
        from ..layout import LayoutError
        cfg = self.cfg
        try:
            for k, (fam, host, port) in enumerate(cfg.listen):
                d = Dispatcher(n, obj=cfg.obj, share=self.dispatchers[0] if k else None,
                               migrate=cfg.migrate, **cfg.policy)
                self.dispatchers.append(d)
                try:
                    port = d.listen(host, port, cfg.backlog)
                except OSError as e:
                    if e.errno == errno.EADDRINUSE:
                        raise LaunchError("%s: address already in use"
                                          % _sockets.format_address(fam, host, port)) from None
                    raise LaunchError("%s: %s" % (_sockets.format_address(fam, host, port),
                                                  e.strerror)) from None
                self.addresses.append((fam, host, port))
        except (BPFError, LayoutError) as e:
            msg = str(e).split("\n", 1)[0]
            if "EPERM" in msg or "EACCES" in msg:
                from .caps import FOR_DISPATCH, missing
                lack = missing(FOR_DISPATCH) or ["a capability the kernel asked for"]
                raise LaunchError("cannot load the dispatcher: lacking %s (%s); run as root, "
                                  "or use --dispatch reuseport to run without BPF"
                                  % (" and ".join(lack), msg)) from None
            raise LaunchError("cannot load the dispatcher: %s" % msg) from None
        for i in range(n):
            self.slots.append(Slot(i, [d.sockets[i] for d in self.dispatchers]))
        if not self.dispatchers[0].migrate:
            log.warning("sk_reuseport/migrate: not supported: needs Linux 5.14; a listener "
                        "removed by TTOU stays open until its queue drains")
        if cfg.observe != "off":
            from .observe import Observer
            self.observer = Observer(self.dispatchers[0].state, cfg.observe_interval,
                                     accept_queue)
        self._pin()

    def _pin(self):
        from ..bpf import BPFError, pin
        d = os.path.join(control.PIN_ROOT, self.cfg.name)
        try:
            pin.ensure_bpffs()
            if os.path.exists(d):
                shutil.rmtree(d)      # left by a launcher of this name that died
            pin.makedirs(d)
            for k, disp in enumerate(self.dispatchers):
                disp.coll.pin(os.path.join(d, "listen%d" % k))
        except (BPFError, OSError) as e:
            shutil.rmtree(d, ignore_errors=True)
            raise LaunchError("pin %s: %s" % (d, e)) from None
        self.pin_dir = d

    def _slot_sockets(self, i):
        if self.cfg.dispatch == "exclusive":
            return list(self.shared)
        return list(self.per_slot[i])

    def _open_control(self):
        path = control.socket_path(self.cfg.name)
        try:
            os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            old = os.umask(0o177)        # 0600: the launcher's user only
            try:
                s.bind(path)
            finally:
                os.umask(old)
            s.listen(16)
            s.setblocking(False)
        except OSError as e:
            raise LaunchError("control socket %s: %s" % (path, e.strerror)) from None
        self.ctl = s

    def cleanup(self):
        """Leave nothing behind: children, sockets, pins, control socket, pidfile."""
        for pid in self._children():
            _kill(pid, signal.SIGKILL)
        self._reap(block=True)
        if self.observer is not None:
            self.observer.close()
        for d in self.dispatchers:
            d.close()
        for slot, _ in self.draining:
            for sock in slot.sockets:
                sock.close()
        for s in self.shared + [s for socks in self.per_slot.values()
                                for s in socks]:
            s.close()
        if self.pin_dir:
            shutil.rmtree(self.pin_dir, ignore_errors=True)
            try:
                os.rmdir(control.PIN_ROOT)     # only if no other launcher uses it
            except OSError:
                pass
        if self.ctl is not None:
            self.ctl.close()
            _unlink(control.socket_path(self.cfg.name))
            try:
                os.rmdir(control.run_dir())     # only if no other launcher uses it
            except OSError:
                pass
        if self.cfg.pidfile:
            _unlink(self.cfg.pidfile)

    # --- the loop ----------------------------------------------------------------------------
    def run(self):
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self.wake_w)
        for sig in HANDLED:
            signal.signal(sig, self._on_signal)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED)    # blocked if we were re-exec'd
        self._reap()               # children that exited while we were re-exec'ing
        for slot in self.slots:
            if slot.pid is None:
                self._start(slot)
        log.info("serving %s with %d workers, dispatch %s",
                 ", ".join(_sockets.format_address(*a) for a in self.addresses),
                 len(self.slots), self.cfg.dispatch)
        # READY=1 once every worker has attached (or READY_WAIT_S passed), so
        # `systemctl start` and tests return to a pool that serves from all of them.
        ready_by = time.monotonic() + READY_WAIT_S
        next_watch = 0.0
        while True:
            try:
                ready, _, _ = select.select([self.wake_r, self.ctl], [], [], self._timeout())
            except InterruptedError:
                ready = [self.wake_r]
            if self.wake_r in ready:
                try:
                    while os.read(self.wake_r, 512):
                        pass
                except BlockingIOError:
                    pass
                self._handle_signals()      # SIGCHLD included: reaps
            if self.stopping:
                if not self._children():
                    return 0
                self._enforce_deadlines()
                continue
            now = time.monotonic()
            if ready_by and (now >= ready_by or all(map(self._ready, self.slots))):
                ready_by = None
                self.ready_sent = True
                sd_notify("READY=1\nSTATUS=%d workers, dispatch %s\nMAINPID=%d"
                          % (len(self.slots), self.cfg.dispatch, os.getpid()))
            self._start_due()
            if self.observer is not None and self.observer.due(now):
                self.observer.sample()
            if now >= next_watch:            # the slower duties: at a quarter threshold
                next_watch = now + self._watch_every()
                self._watch()
                self._check_hangs()
                self._enforce_deadlines()
                self._finish_draining()
            if self.ctl in ready:
                self._serve_control()

    def _timeout(self):
        now = time.monotonic()
        t = self._watch_every()
        for slot in self.slots:
            if slot.pid is None:
                t = min(t, max(0.0, slot.next_start - now))
        if self.reload_wait or not self.ready_sent:
            t = min(t, 0.02)
        if self.observer is not None and self.observer.watched:
            t = min(t, max(0.0, self.observer.next - now))
        return t

    def _on_signal(self, signum, frame):
        self.signals.append(signum)

    def _handle_signals(self):
        while self.signals:
            sig = self.signals.pop(0)
            if sig == signal.SIGCHLD:
                self._reap()
            if sig == signal.SIGTERM:
                self.stop("graceful")
            elif sig in (signal.SIGINT, signal.SIGQUIT):
                self.stop("fast")
            elif sig == signal.SIGHUP:
                self.reload()
            elif sig == signal.SIGTTIN:
                self.grow()
            elif sig == signal.SIGTTOU:
                self.shrink()
            elif sig == signal.SIGUSR2:
                self.upgrade()
            elif sig == signal.SIGUSR1:
                self.cfg.reopen_logs()
                for pid in self._children():
                    _kill(pid, signal.SIGUSR1)

    def _children(self):
        return [s.pid for s in self.slots + [x for x, _ in self.draining] if s.pid] + \
            list(self.old)

    # --- workers ------------------------------------------------------------------------------
    def _start(self, slot):
        cfg = self.cfg
        env = dict(os.environ)
        env.pop("NOTIFY_SOCKET", None)
        env.update(HERMES_WORKER_ID=str(slot.id), HERMES_DISPATCH=cfg.dispatch,
                   HERMES_GRACEFUL_TIMEOUT=str(cfg.graceful_timeout))
        fd_env = {}
        if self.dispatchers:
            wenv, _ = self.dispatchers[0].worker_env(slot.id)
            env.update({ENV_SLOT: wenv[ENV_SLOT], ENV_OBJ: wenv[ENV_OBJ]})
            fd_env = {ENV_WST_FD: int(wenv[ENV_WST_FD]), ENV_SCHED_FD: int(wenv[ENV_SCHED_FD])}
        argv = cfg.command
        if not argv:
            argv = demo_argv()
            env["PYTHONPATH"] = package_pythonpath(env)
        names = ["%s-%d" % (h.replace(":", "_"), p) for _, h, p in self.addresses]
        slot.pid = spawn(argv, env, slot.sockets, names, fd_env, cfg.user)
        slot.started = time.monotonic()
        slot.started_ns = time.monotonic_ns()
        if self.dispatchers:
            self.dispatchers[0].state.set_stuck(slot.id, False)
        if self.observer is not None:
            self.observer.track(slot.id, slot.pid, slot.sockets)
        log.debug("worker %d: started pid %d", slot.id, slot.pid)

    def _start_due(self):
        now = time.monotonic()
        for slot in self.slots:
            if slot.pid is None and now >= slot.next_start:
                self._start(slot)
        if self.reloading or self.reload_wait:
            self._reload_next()

    def _reap(self, block=False):
        while True:
            try:
                pid, status = os.waitpid(-1, 0 if block else os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self._exited(pid, status)

    def _exited(self, pid, status):
        if self.old.pop(pid, None) is not None:
            log.debug("old worker pid %d %s", pid, describe_status(status))
            return
        slot = next((s for s in self.slots if s.pid == pid), None)
        if slot is None:
            return
        slot.pid = None
        slot.last_status = status
        if self.observer is not None:
            self.observer.forget(slot.id)
        self._forget(slot)
        if self.stopping:
            return
        lived = time.monotonic() - slot.started
        slot.failures = slot.failures + 1 if lived < QUICK_EXIT_S else 0
        slot.restarts += 1
        log.warning("worker %d (pid %d) %s after %.1f s; restarting", slot.id, pid,
                    describe_status(status), lived)
        if slot.failures >= CRASH_LOOP:
            raise Fatal("worker %d failed %d times in a row within %.0f s of starting (last: "
                        "%s); giving up" % (slot.id, slot.failures, QUICK_EXIT_S,
                                            describe_status(status)))
        backoff = min(BACKOFF_MAX_S, 0.1 * 2 ** slot.failures) if slot.failures else 0.0
        slot.next_start = time.monotonic() + backoff

    def _forget(self, slot):
        """A dead worker's slot: out of the bitmap now, not at the next scheduler turn."""
        if not self.dispatchers:
            return
        from ..sdk.scheduler import Scheduler
        st = self.dispatchers[0].state
        lay = st.layout
        st.wst[lay.slot_word(slot.id, "layout")] = 0
        st.wst[lay.slot_word(slot.id, "busy_since_ns")] = 0
        Scheduler(st, slot.id // lay.group_size).run(time.monotonic_ns())

    def _watch_every(self):
        if not self.dispatchers:
            return TICK_S
        return min(TICK_S, max(0.005, self.dispatchers[0].state.policy()["hang_threshold_ms"]
                               / 4000))

    def _watch(self):
        """Find workers asleep on a non-empty accept queue (stopped, or frozen in
        poll).  By their own account they are idle, so neither the scheduler nor
        the kernel's re-check can tell; the launcher, holding every socket, can."""
        if not self.dispatchers:
            return
        st = self.dispatchers[0].state
        now = time.monotonic_ns()
        thresh = st.sched[st.layout.policy_word("hang_threshold_ns")]
        for slot in self.slots:
            if slot.pid is None:
                continue
            beat = st.wst[st.layout.slot_word(slot.id, "heartbeat_ns")]
            stuck = now - (beat or slot.started_ns) > thresh and \
                any(accept_queue(s) for s in slot.sockets)
            if stuck != st.stuck(slot.id):
                st.set_stuck(slot.id, stuck)
                if not beat:
                    log.debug("worker %d (pid %d) is still starting", slot.id, slot.pid)
                elif stuck:
                    log.warning("worker %d (pid %d) is not taking connections: out of "
                                "dispatch until it does", slot.id, slot.pid)
                else:
                    log.info("worker %d (pid %d) is back", slot.id, slot.pid)

    def _check_hangs(self):
        if not self.cfg.kill_timeout or not self.dispatchers:
            return
        st = self.dispatchers[0].state
        now = time.monotonic_ns()
        limit = self.cfg.kill_timeout * 1e9
        for slot in self.slots:
            if slot.pid is None:
                continue
            busy = st.slot(slot.id)["busy_since_ns"]
            if busy and now > busy and now - busy > limit:
                log.warning("worker %d (pid %d) busy for %.1f s: killing it", slot.id,
                            slot.pid, (now - busy) / 1e9)
                _kill(slot.pid, signal.SIGKILL)

    def _retire(self, pid, timeout):
        """Ask a worker to stop; kill it if it is still there after `timeout`."""
        self.old[pid] = time.monotonic() + timeout
        _kill(pid, signal.SIGTERM)

    def _enforce_deadlines(self):
        now = time.monotonic()
        for pid, deadline in list(self.old.items()):
            if now > deadline:
                log.warning("worker pid %d did not stop in time: killing it", pid)
                _kill(pid, signal.SIGKILL)
                self.old[pid] = float("inf")

    # --- replacing the launcher itself -----------------------------------------------------------
    def upgrade(self):
        """USR2: re-exec the launcher in place, as a new version of its code.

        Same pid, so the workers stay its children and keep serving; the listening
        sockets and the control socket pass across exec as fds, the dispatcher as
        its pins.  Nothing is closed, so no connection notices.  If exec fails the
        old image carries on.
        """
        if self.reloading or self.reload_wait:
            log.warning("USR2 during a reload: try again when it is done")
            return
        keep = [self.ctl.fileno()] + [s.fileno() for slot in self.slots for s in slot.sockets]
        state = {
            "ctl": self.ctl.fileno(), "pin_dir": self.pin_dir,
            "addresses": self.addresses, "uptime": time.monotonic() - self.started,
            "upgrades": self.upgrades + 1,
            "old": {str(pid): dl - time.monotonic() for pid, dl in self.old.items()},
            "slots": [{"id": x.id, "pid": x.pid, "restarts": x.restarts,
                       "age": time.monotonic() - x.started,
                       "fds": [s.fileno() for s in x.sockets]} for x in self.slots],
        }
        env = dict(os.environ, HERMES_UPGRADE=json.dumps(state))
        argv = [sys.executable, "-m", "hermes.launch"] + self.cfg.argv
        log.info("USR2: re-exec %s", " ".join(argv))
        for fd in keep:
            os.set_inheritable(fd, True)
        # Signals stay blocked across exec (the mask is inherited) and pending ones
        # wait: the new image unblocks them once its handlers are in place.
        signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)
        try:
            os.execve(sys.executable, argv, env)
        except OSError as e:
            log.error("USR2: cannot re-exec: %s; carrying on", e)
            for fd in keep:
                os.set_inheritable(fd, False)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED)

    def adopt(self, state):
        """The other half of upgrade(): take over what the previous image held."""
        cfg = self.cfg
        self.upgrades = state["upgrades"]
        self.started = time.monotonic() - state["uptime"]
        self.addresses = [tuple(a) for a in state["addresses"]]
        self.ctl = socket.socket(fileno=state["ctl"])
        self.ctl.setblocking(False)
        os.set_inheritable(self.ctl.fileno(), False)
        socks = {}
        for x in state["slots"]:
            for fd in x["fds"]:
                if fd not in socks:
                    socks[fd] = socket.socket(fileno=fd)
                    os.set_inheritable(fd, False)
        self.old = {int(pid): time.monotonic() + left for pid, left in state["old"].items()}
        for x in state["slots"]:
            slot = Slot(x["id"], [socks[fd] for fd in x["fds"]])
            slot.pid, slot.restarts = x["pid"], x["restarts"]
            slot.started = time.monotonic() - x["age"]
            slot.started_ns = time.monotonic_ns() - int(x["age"] * 1e9)
            self.slots.append(slot)
        if cfg.dispatch == "exclusive":
            self.shared = list(self.slots[0].sockets) if self.slots else []
        elif cfg.dispatch == "reuseport":
            self.per_slot = {x.id: list(x.sockets) for x in self.slots}
        else:
            from ..dispatcher import Dispatcher
            self.pin_dir = state["pin_dir"]
            for k in range(len(self.addresses)):
                self.dispatchers.append(Dispatcher.from_pins(
                    os.path.join(self.pin_dir, "listen%d" % k), len(self.slots),
                    {x.id: x.sockets[k] for x in self.slots}, obj=cfg.obj,
                    migrate=cfg.migrate))
            if cfg.observe != "off":
                from .observe import Observer
                self.observer = Observer(self.dispatchers[0].state, cfg.observe_interval,
                                         accept_queue)
                for slot in self.slots:
                    if slot.pid:
                        self.observer.track(slot.id, slot.pid, slot.sockets)
        log.info("USR2: took over %d workers (upgrade %d)", len(self.slots), self.upgrades)

    # --- operations ----------------------------------------------------------------------------
    def stop(self, how):
        if self.stopping == "fast" or self.stopping == how:
            return
        log.info("%s stop", how)
        sd_notify("STOPPING=1")
        self.stopping = how
        timeout = self.cfg.graceful_timeout if how == "graceful" else 1.0
        for slot in self.slots + [x for x, _ in self.draining]:
            if slot.pid:
                self.old[slot.pid] = time.monotonic() + timeout
                _kill(slot.pid, signal.SIGTERM if how == "graceful" else signal.SIGINT)
                slot.pid = None
        for pid in self.old:
            self.old[pid] = min(self.old[pid], time.monotonic() + timeout)

    def reload(self):
        """HUP: replace every worker, one slot at a time; old ones drain."""
        log.info("reloading %d workers", len(self.slots))
        sd_notify("RELOADING=1")
        self.reloading = list(self.slots)
        self._reload_next()

    def _reload_next(self):
        """Replace the next slot's worker once the previous replacement is ready."""
        if self.reload_wait is not None:
            slot, deadline = self.reload_wait
            if slot.pid and not self._ready(slot) and time.monotonic() < deadline:
                return
            self.reload_wait = None
        while self.reloading:
            slot = self.reloading.pop(0)
            if slot.pid:
                self._retire(slot.pid, self.cfg.graceful_timeout)
            slot.pid = None
            slot.failures = 0
            self._start(slot)
            if not self.cfg.reload_all:
                self.reload_wait = (slot, time.monotonic() + READY_WAIT_S)
                return
        sd_notify("READY=1")

    def _ready(self, slot):
        """Has slot's worker attached, or been taken under observation?  Without
        either (other dispatch modes) there is no telling: give it half a second."""
        if not slot.pid:
            return False
        if not self.dispatchers:
            return time.monotonic() - slot.started > 0.5
        st = self.dispatchers[0].state
        s = st.slot(slot.id)
        return s["pid"] == slot.pid and s["layout"] == st.layout.value

    def grow(self):
        n = len(self.slots)
        try:
            if self.dispatchers:
                for d in self.dispatchers:
                    d.resize(n + 1)
                    _, host, port = self.addresses[self.dispatchers.index(d)]
                    d.listen(host, port, self.cfg.backlog, slots=[n])
                socks = [d.sockets[n] for d in self.dispatchers]
            elif self.cfg.dispatch == "reuseport":
                for fam, host, port in self.addresses:
                    self.per_slot.setdefault(n, []).append(self._bind(fam, host, port, True))
                socks = self.per_slot[n]
            else:
                socks = list(self.shared)
        except (LaunchError, OSError, ValueError) as e:
            log.error("cannot add a worker: %s", e)
            return
        slot = Slot(n, socks)
        self.slots.append(slot)
        self._start(slot)
        log.info("workers: %d", len(self.slots))

    def shrink(self):
        if len(self.slots) <= 1:
            log.warning("TTOU: keeping the last worker")
            return
        slot = self.slots.pop()
        if self.observer is not None:
            self.observer.forget(slot.id)
        if slot in self.reloading:
            self.reloading.remove(slot)
        for d in self.dispatchers:
            d.remove_socket(slot.id)
            d.resize(len(self.slots))
        self.per_slot.pop(slot.id, None)
        if self.cfg.dispatch == "exclusive":
            if slot.pid:                       # its sockets are everyone's: keep them
                self._retire(slot.pid, self.cfg.graceful_timeout)
        elif self.dispatchers and not self.dispatchers[0].migrate:
            # No sk_reuseport/migrate (before 5.14): closing the listener would reset
            # its queue.  Out of dispatch now; its worker drains the queue, and both
            # go once it is empty (or the graceful timeout passes).
            self.draining.append((slot, time.monotonic() + self.cfg.graceful_timeout))
        else:
            if slot.pid:
                self._retire(slot.pid, self.cfg.graceful_timeout)
            for s in slot.sockets:
                s.close()      # sk_reuseport/migrate moves its queue to live listeners
        log.info("workers: %d", len(self.slots))

    def _finish_draining(self):
        now = time.monotonic()
        for item in list(self.draining):
            slot, deadline = item
            if now < deadline and any(accept_queue(s) for s in slot.sockets):
                continue
            self.draining.remove(item)
            if slot.pid:
                self._retire(slot.pid, self.cfg.graceful_timeout)
            for s in slot.sockets:
                s.close()

    # --- control socket ------------------------------------------------------------------------
    def _serve_control(self):
        while True:
            try:
                conn, _ = self.ctl.accept()
            except (BlockingIOError, InterruptedError):
                return
            with conn:
                conn.settimeout(0.5)
                try:
                    line = _read_line(conn)
                    reply = self._control(json.loads(line))
                except (ValueError, TypeError) as e:
                    reply = {"error": "bad request: %s" % e}
                except OSError:
                    continue
                try:
                    conn.sendall(json.dumps(reply).encode() + b"\n")
                except OSError:
                    pass

    def _control(self, req):
        cmd = req.get("cmd")
        if cmd == "status":
            return self.status()
        if cmd in ("drain", "resume"):
            if not self.dispatchers:
                return {"error": "%s needs --dispatch hermes" % cmd}
            wid = req.get("id")
            if not isinstance(wid, int) or not 0 <= wid < len(self.slots):
                return {"error": "no worker %r (have 0..%d)" % (wid, len(self.slots) - 1)}
            self.dispatchers[0].state.set_drained(wid, cmd == "drain")
            return {"ok": True}
        if cmd == "set":
            if not self.dispatchers:
                return {"error": "set needs --dispatch hermes"}
            policy = req.get("policy")
            if not isinstance(policy, dict):
                return {"error": "set: expected a policy object"}
            try:
                self.dispatchers[0].state.set_policy(**policy)
            except (TypeError, ValueError) as e:
                return {"error": "set: %s" % e}
            return {"ok": True, "policy": self._policy()}
        return {"error": "unknown command %r" % cmd}

    def _policy(self):
        if not self.dispatchers:
            return None
        p = self.dispatchers[0].state.policy()
        return {k: p[k] for k in ("hang_threshold_ms", "theta", "stale_limit_ms", "group_mode")}

    def status(self):
        out = {"name": self.cfg.name, "pid": os.getpid(), "version": __version__,
               "dispatch": self.cfg.dispatch,
               "listen": [_sockets.format_address(*a) for a in self.addresses],
               "uptime_s": round(time.monotonic() - self.started, 3),
               "upgrades": self.upgrades,
               "policy": self._policy(), "workers": [], "fallbacks": {}, "selected": None,
               "warnings": []}
        st = self.dispatchers[0].state if self.dispatchers else None
        dispatched = None
        if st is not None:
            dispatched, reasons = st.stats()
            out["selected"] = reasons.pop("selected")
            out["fallbacks"] = reasons
            thresh = st.policy()["hang_threshold_ms"] * 1e6
        now = time.monotonic_ns()
        for slot in self.slots:
            w = {"id": slot.id, "pid": slot.pid, "restarts": slot.restarts, "state": None,
                 "observed": None,
                 "eligible": None, "loop_age_ms": None, "busy_ms": None, "pending": None,
                 "conns": None, "dispatched": None}
            if st is not None:
                s = st.slot(slot.id)
                lay = st.layout
                g, bit = divmod(slot.id, lay.group_size)
                drained = st.drained(slot.id)
                busy = s["busy_since_ns"]
                busy_ns = now - busy if busy and now > busy else 0
                w.update(eligible=bool(st.bitmap(g) >> bit & 1) and not drained,
                         observed=bool(s["flags"] & lay.OBSERVED),
                         loop_age_ms=_ms(now - s["heartbeat_ns"]) if s["heartbeat_ns"] else None,
                         busy_ms=_ms(busy_ns), pending=s["pending"], conns=s["conns"],
                         dispatched=dispatched[slot.id] if slot.id < len(dispatched) else 0)
                w["warnings"] = slot_warnings(s, slot.pid, now, lay.value)
                if slot.pid is None:
                    w["state"] = "restarting"
                elif not self._ready(slot):
                    w["state"] = "starting"       # not attached (nor observed) yet
                elif drained or s["flags"] & lay.DRAINING:
                    w["state"] = "draining"
                elif st.stuck(slot.id):
                    w["state"] = "hung"
                    w["eligible"] = False
                elif not busy:
                    w["state"] = "idle"
                else:
                    w["state"] = "hung" if busy_ns > thresh else "busy"
            else:
                w["state"] = "restarting" if slot.pid is None else "running"
            out["workers"].append(w)
        if st is not None:
            out["warnings"] = pool_warnings(st, len(self.slots), now)
        return out


# Workers share writable memory, so a buggy or hostile one can write anything.
# It can skew dispatch within the pool, never route outside it (the dispatcher
# only selects sockets the launcher put in the array); status says what looks off.
IMPLAUSIBLE = 1 << 32           # more pending events or connections than any host has
FUTURE_NS = 1000000000          # a timestamp this far ahead of our clock is not skew


def slot_warnings(s, pid, now, layout):
    out = []
    if s["layout"] not in (0, layout):
        out.append("slot layout word %#x is not this Hermes' %#x" % (s["layout"], layout))
    if pid and s["layout"] == layout and s["pid"] != pid:
        out.append("slot claims pid %d, but the worker is pid %d" % (s["pid"], pid))
    for f in ("busy_since_ns", "heartbeat_ns"):
        if s[f] > now + FUTURE_NS:
            out.append("%s is %.1f s in the future" % (f, (s[f] - now) / 1e9))
    for f in ("pending", "conns"):
        if s[f] >= IMPLAUSIBLE:
            out.append("%s = %d is implausible" % (f, s[f]))
    return out


def pool_warnings(st, nr, now):
    out = []
    lay = st.layout
    for g in range(-(-nr // lay.group_size)):
        in_group = min(lay.group_size, nr - g * lay.group_size)
        extra = st.bitmap(g) >> in_group if in_group < 64 else 0
        if extra:
            out.append("group %d bitmap names workers beyond the pool (%#x)" % (g, st.bitmap(g)))
        if st.stamp_ns(g) > now + FUTURE_NS:
            out.append("group %d bitmap stamp is %.1f s in the future"
                       % (g, (st.stamp_ns(g) - now) / 1e9))
    return out


_TCP_INFO = struct.Struct("8xIIIII")   # struct tcp_info up to tcpi_unacked (offset 24)


def accept_queue(sock):
    """Connections waiting in a listener's accept queue: tcp_info's tcpi_unacked,
    which a LISTEN socket reports as sk_ack_backlog (net/ipv4/tcp.c, tcp_get_info)."""
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO.size)
    except OSError:
        return 0
    return _TCP_INFO.unpack_from(raw)[4] if len(raw) >= _TCP_INFO.size else 0


def _ms(ns):
    return round(ns / 1e6, 3)


def _read_line(conn, limit=65536):
    buf = b""
    while not buf.endswith(b"\n") and len(buf) < limit:
        chunk = conn.recv(4096)
        if not chunk:
            break
        buf += chunk
    return buf.decode()


def _kill(pid, sig):
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _unlink(path):
    try:
        os.unlink(path)
    except OSError:
        pass


def _write_atomic(path, text):
    tmp = "%s.%d.tmp" % (path, os.getpid())
    try:
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as e:
        _unlink(tmp)
        raise LaunchError("pidfile %s: %s" % (path, e.strerror)) from None
