"""Observed mode: publish the state of workers that never attach the SDK.

An unmodified server (nginx-, gunicorn-, uvicorn-style) says nothing, but the
launcher can see enough from outside, cheaply, every few milliseconds:
  - busy or idle: /proc/PID/syscall names the syscall the main thread sleeps in;
    poll/select/epoll/accept is an idle loop, anything else (or running) is busy;
  - pending: the accept-queue depth of its listener, which the launcher holds
    (TCP_INFO's tcpi_unacked on a LISTEN socket: one getsockopt, no netlink);
  - connections: its open sockets other than the listeners (/proc/PID/fd),
    sampled less often since it costs a readlink per descriptor.
It publishes them into the worker's slot (flag HERMES_SLOT_OBSERVED), then runs
the scheduler, so the same dispatcher applies.  A worker blocked in poll while
connections wait in its queue is not marked alive: its heartbeat stalls, and
the launcher's watchdog takes it out like a stopped one.

Which workers: an SDK worker attaches before its loop first polls, so a worker
seen asleep in poll (or accept) without having attached never will; from then
on the launcher speaks for it.  A worker found attached is left alone.
"""

import os
import time

# Syscalls an event loop sleeps in, by machine (asm/unistd_64.h; arm64: the
# generic table include/uapi/asm-generic/unistd.h).
IDLE_SYSCALLS = {
    "x86_64": {7, 23, 43, 232, 270, 271, 281, 288, 441},
    # poll select accept epoll_wait pselect6 ppoll epoll_pwait accept4 epoll_pwait2
    "aarch64": {22, 72, 73, 202, 242, 441},
    # epoll_pwait pselect6 ppoll accept accept4 epoll_pwait2
}.get(os.uname().machine, set())

CONNS_EVERY = 50          # count connections every 50th sample (readlinks are dear)
# 10 ms: at 8 workers a round costs ~150 µs of Python and syscalls, so the observer
# stays near 2% of a core (bench/observer); hang thresholds are 20x longer.
DEFAULT_INTERVAL_MS = 10


class _Watched:
    __slots__ = ("slot", "pid", "sockets", "fd", "busy_since", "words", "observing", "sdk",
                 "w_busy", "w_beat", "w_pending", "w_conns")

    def __init__(self, slot, pid, sockets, words):
        self.slot = slot
        self.pid = pid
        self.sockets = sockets
        self.words = words
        self.w_busy, self.w_beat = words["busy_since_ns"], words["heartbeat_ns"]
        self.w_pending, self.w_conns = words["pending"], words["conns"]
        self.fd = None
        self.busy_since = 0
        self.observing = False
        self.sdk = False


class Observer:
    def __init__(self, state, interval_ms=DEFAULT_INTERVAL_MS, accept_queue=None):
        self.state = state
        self.lay = state.layout
        self.interval = interval_ms / 1000.0
        self.accept_queue = accept_queue
        self.watched = {}
        self.rounds = 0
        self.next = 0.0
        self._scheds = {}

    def track(self, slot, pid, sockets):
        lay = self.lay
        words = {f: lay.slot_word(slot, f) for f in lay.slot}
        self.forget(slot)
        self.watched[slot] = _Watched(slot, pid, sockets, words)

    def forget(self, slot):
        w = self.watched.pop(slot, None)
        if w is not None and w.fd is not None:
            os.close(w.fd)

    def close(self):
        for slot in list(self.watched):
            self.forget(slot)

    def due(self, now):
        return now >= self.next

    def _attached(self, w):
        wst, words = self.state.wst, w.words
        return wst[words["pid"]] == w.pid and wst[words["layout"]] == self.lay.value

    def _open(self, w):
        try:
            w.fd = os.open("/proc/%d/syscall" % w.pid, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return False
        return True

    def _take_over(self, w):
        """Speak for a worker seen idle without the SDK: publish its slot."""
        wst, lay, words = self.state.wst, self.lay, w.words
        wst[words["layout"]] = 0
        for f in ("busy_since_ns", "pending", "conns"):
            wst[words[f]] = 0
        wst[words["heartbeat_ns"]] = time.monotonic_ns()
        wst[words["pid"]] = w.pid
        wst[words["generation"]] = wst[words["generation"]] + 1
        wst[words["flags"]] = lay.OBSERVED
        wst[words["layout"]] = lay.value
        w.observing = True

    def sample(self):
        """One round over every observed worker, then the scheduler; -> seconds to next."""
        now_s = time.monotonic()
        self.next = now_s + self.interval
        wst = self.state.wst
        now = time.monotonic_ns()
        self.rounds += 1
        count_conns = self.rounds % CONNS_EVERY == 0
        groups = set()
        aq, idle_set, pread = self.accept_queue, IDLE_SYSCALLS, os.pread
        for w in self.watched.values():
            if w.sdk:
                continue
            if w.fd is None and not self._open(w):
                continue
            try:
                head = pread(w.fd, 16, 0)
            except OSError:
                continue                      # gone: the launcher reaps and forgets it
            nr = head.split(b" ", 1)[0]
            idle = nr.isdigit() and int(nr) in idle_set
            if not w.observing:
                if self._attached(w):
                    w.sdk = True              # it publishes for itself
                    os.close(w.fd)
                    w.fd = None
                    continue
                if not idle:
                    continue                  # still starting up
                self._take_over(w)
            queued = aq(w.sockets[0]) if len(w.sockets) == 1 else \
                max(aq(s) for s in w.sockets)
            if idle:
                w.busy_since = 0
                if not queued:
                    wst[w.w_beat] = now      # the loop turns: asleep, nothing waiting
            elif not w.busy_since:
                w.busy_since = now
            wst[w.w_busy] = w.busy_since
            wst[w.w_pending] = queued
            if count_conns:
                wst[w.w_conns] = _open_sockets(w.pid, len(w.sockets))
            groups.add(w.slot // self.lay.group_size)
        for g in groups:
            sched = self._scheds.get(g)
            if sched is None:
                from ..sdk.scheduler import Scheduler
                sched = self._scheds[g] = Scheduler(self.state, g)
            sched.run(now)
        return self.interval


def _open_sockets(pid, listeners):
    """Sockets the process holds, less its inherited listeners."""
    n = 0
    try:
        base = "/proc/%d/fd" % pid
        for fd in os.listdir(base):
            try:
                if os.readlink(os.path.join(base, fd)).startswith("socket:"):
                    n += 1
            except OSError:
                pass
    except OSError:
        return 0
    return max(0, n - listeners)
