"""The Hermes worker SDK: publish this worker's state and run the scheduler.

    import hermes.sdk
    worker = hermes.sdk.attach()          # None when not run under hermes-launch
    sel = hermes.sdk.HermesSelector()     # a selectors.DefaultSelector that does it all
    hermes.sdk.instrument()               # or: instrument the running asyncio loop

By hand, around a poll loop:

    worker.before_poll()                  # end of an iteration: schedule, then idle
    events = poller.poll(timeout)
    worker.after_poll(len(events))        # woke up: busy from now on
    ...                                   # worker.event_done(), conn_opened(), conn_closed()

A worker blocked in poll is idle, not hung: before_poll() clears its busy-since
stamp, so no periodic wake-ups are needed (DESIGN.md §3.4).
"""

import os
import time

from ..layout import Layout, LayoutError
from ..state import ENV_SLOT, SharedState
from .scheduler import Scheduler

__all__ = ["Worker", "attach", "LayoutError", "HermesSelector", "instrument"]

_now = time.monotonic_ns     # CLOCK_MONOTONIC, the clock of bpf_ktime_get_ns()

# A busy Python loop turns tens of thousands of times a second and the cascade
# costs microseconds here (bench/sdk), so a worker recomputes the bitmap at most
# every 0.5 ms; with N workers it is still refreshed N times as often, and the
# kernel re-checks hangs at each pick anyway.  The C SDK, at ~90 ns, runs it on
# every iteration as the paper does.
SCHED_EVERY_NS = 500000


class Worker:
    """This process's slot in the Worker Status Table."""

    # Slots, not a dict: the hooks run every loop iteration (bench/sdk).
    __slots__ = ("state", "slot", "pending", "conns", "_w", "_busy", "_heartbeat", "_pending",
                 "_conns", "_flags", "_sched", "_next_sched")

    def __init__(self, state, slot, layout_value=None):
        lay = state.layout
        expect = lay.value if layout_value is None else layout_value
        have = state.sched[lay.policy_word("layout")]
        if have != expect:
            raise LayoutError(
                "shared state layout %#x (version %d) does not match this worker's "
                "%#x (version %d): rebuild the worker against the running Hermes"
                % (have, have & 0xFFFFFFFF, expect, expect & 0xFFFFFFFF))
        nr = state.sched[lay.policy_word("nr_workers")]
        if not 0 <= slot < nr:
            raise LayoutError("slot %d is outside the pool of %d workers" % (slot, nr))
        self.state = state
        self.slot = slot
        self.pending = 0
        self.conns = 0
        w = self._w = state.wst
        self._busy = lay.slot_word(slot, "busy_since_ns")
        self._heartbeat = lay.slot_word(slot, "heartbeat_ns")
        self._pending = lay.slot_word(slot, "pending")
        self._conns = lay.slot_word(slot, "conns")
        self._flags = lay.slot_word(slot, "flags")
        self._sched = Scheduler(state, slot // lay.group_size)
        self._next_sched = 0
        now = _now()
        w[lay.slot_word(slot, "layout")] = 0      # not eligible while half-written
        w[self._busy] = 0
        w[self._heartbeat] = now
        w[self._pending] = 0
        w[self._conns] = 0
        w[lay.slot_word(slot, "pid")] = os.getpid()
        gen = lay.slot_word(slot, "generation")
        w[gen] = w[gen] + 1                        # our own slot: we are its only writer
        w[self._flags] = 0
        w[lay.slot_word(slot, "layout")] = expect

    # --- loop hooks: each is a few word stores -------------------------------------
    def before_poll(self):
        """End of a loop iteration, about to block: mark idle, then schedule.

        Idle first: a worker back from a long iteration is no longer hung, and
        must not take itself out of the bitmap it is about to write.
        """
        now = _now()
        w = self._w
        w[self._busy] = 0
        w[self._heartbeat] = now
        if now >= self._next_sched:
            self._next_sched = now + SCHED_EVERY_NS
            self._sched.run(now)

    def after_poll(self, nevents):
        """Poll returned: busy from now on, with `nevents` more to handle."""
        w = self._w
        w[self._busy] = _now()
        if nevents:
            self.pending += nevents
            w[self._pending] = self.pending

    def event_done(self, n=1):
        p = self.pending - n
        self.pending = p = p if p > 0 else 0     # cheaper than max() on the hot path
        self._w[self._pending] = p

    def set_pending(self, n):
        self.pending = n
        self._w[self._pending] = n

    def conn_opened(self):
        self.conns += 1
        self._w[self._conns] = self.conns

    def conn_closed(self):
        self.conns = max(0, self.conns - 1)
        self._w[self._conns] = self.conns

    def set_draining(self, draining=True):
        self._w[self._flags] = self.state.layout.DRAINING if draining else 0

    def detach(self):
        """Leave the pool and stop publishing (e.g. on SIGTERM, while draining).

        A replacement may already own the slot (graceful reload): then the slot
        is left alone.  Later hooks write to private memory, so a draining loop
        can keep calling them.
        """
        lay = self.state.layout
        w = self._w
        if w is not _SINK and w[lay.slot_word(self.slot, "pid")] == os.getpid():
            w[lay.slot_word(self.slot, "layout")] = 0     # out of the pool first,
            w[self._busy] = 0                            # then claim no load
            w[self._pending] = 0
            w[self._conns] = 0
        self._w = _SINK
        self._sched = _NoScheduler


class _Sink:
    """Where a detached worker's stores go."""
    __slots__ = ()

    def __setitem__(self, i, v):
        pass

    def __getitem__(self, i):
        return 0


class _NoScheduler:
    @staticmethod
    def run(now):
        return 0


_SINK = _Sink()


def attach(env=None):
    """The Worker the launcher set up for this process, or None outside Hermes."""
    env = os.environ if env is None else env
    state = SharedState.from_env(env)
    if state is None:
        return None
    try:
        return Worker(state, int(env[ENV_SLOT]))
    except (KeyError, ValueError):
        state.close()
        raise LayoutError("bad Hermes environment: %s is missing or not a number" % ENV_SLOT)
    except BaseException:
        state.close()
        raise


from .selector import HermesSelector, instrument  # noqa: E402  (they build on Worker)
