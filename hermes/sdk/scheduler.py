"""The scheduler (the paper's Algorithm 1), run by every worker for its group.

A cascade of filters over the group's workers, written as one bitmap store:
  1. attached, not draining (itself or by the operator's drain mask), not found
     stuck by the launcher, and not busy past the hang threshold;
  2. connections <= avg * (1 + θ);
  3. pending events <= avg * (1 + θ).
The paper writes `< avg + θ`; with "<=" a group where every count is equal (say,
all zero) keeps everyone instead of no one.  Averages are over the survivors of
the previous filter.  Integer arithmetic throughout: x * n * 1000 <= sum * (1000 + θ‰).

Unlike the paper, a load filter that would leave fewer than two workers is
skipped: the dispatcher spreads over two or more, and with one it falls back to
the kernel's hash, which reaches hung workers too.  Only the hang filter (1.)
may shrink the set further.
"""

import struct
from itertools import compress

# What the cascade reads of each slot, in the order compute() takes them.
_FIELDS = ("busy_since_ns", "pending", "conns", "flags", "layout")


class Scheduler:
    """Computes and publishes one group's bitmap from the mmap'd state."""

    __slots__ = ("wst", "sched", "first", "size", "nr", "w_nr", "stride", "words", "offset",
                 "readers", "value", "draining", "w_bitmap", "w_stamp", "w_drain", "w_stuck",
                 "w_thresh", "w_theta")

    def __init__(self, state, group):
        lay = state.layout
        self.wst, self.sched = state.wst, state.sched
        self.first = group * lay.group_size
        self.size = lay.group_size
        self.stride = lay.slot_words
        self.words = [lay.slot[f] for f in _FIELDS]
        self.offset = self.first * self.stride * 8
        self.w_nr = lay.policy_word("nr_workers")
        self.nr = None
        self.value = lay.value
        self.draining = lay.DRAINING
        self.w_bitmap = lay.group_word(group, "bitmap")
        self.w_stamp = lay.group_word(group, "stamp_ns")
        self.w_drain = lay.group_word(group, "drain_mask")
        self.w_stuck = lay.group_word(group, "stuck_mask")
        self.w_thresh = lay.policy_word("hang_threshold_ns")
        self.w_theta = lay.policy_word("theta_permille")

    def _bounds(self, nr):
        """The pool can grow or shrink (TTIN/TTOU): follow nr_workers."""
        n = max(0, min(self.size, nr - self.first))
        self.nr = nr
        # One native unpack per field reads it from every slot of the group: a
        # memcpy per word, like memoryview's own reads, and no Python loop.
        gap = "Q%dx" % ((self.stride - 1) * 8)
        self.readers = tuple(
            struct.Struct("@%dx" % (w * 8) + gap * (n - 1) + "Q" * min(n, 1)).unpack_from
            for w in self.words)

    def compute(self, now):
        """The bitmap for the group's current state (publishes nothing)."""
        sched = self.sched
        nr = sched[self.w_nr]
        if nr != self.nr:
            self._bounds(nr)
        wst, at = self.wst, self.offset
        r_busy, r_pending, r_conns, r_flags, r_layout = self.readers
        busy, pending, conns = r_busy(wst, at), r_pending(wst, at), r_conns(wst, at)
        flags, lays = r_flags(wst, at), r_layout(wst, at)
        thresh = sched[self.w_thresh]
        out = sched[self.w_drain] | sched[self.w_stuck]
        k = 1000 + sched[self.w_theta]
        value, n = self.value, len(busy)
        if not n:
            return 0
        # Built-in tuple methods settle the usual cases without a Python loop; they
        # only answer when the loop would answer the same, and any doubt takes it.
        if (lays.count(value) == n and flags.count(0) == n and not out & ((1 << n) - 1)
                and (busy.count(0) == n or min(filter(None, busy)) > now - thresh)):
            # All attached, none out, none hung; and if no count is over its bound:
            if ((conns.count(conns[0]) == n or max(conns) * n * 1000 <= sum(conns) * k)
                    and (pending.count(pending[0]) == n
                         or max(pending) * n * 1000 <= sum(pending) * k)):
                return (1 << n) - 1
            alive = list(range(n))
        else:
            # A timestamp from the future (clock skew, garbage) is not a hang.
            draining = self.draining
            alive = [i for i, b in enumerate(busy)
                     if lays[i] == value and not flags[i] & draining and not out >> i & 1
                     and (b == 0 or now <= b or now - b < thresh)]
        for col in (conns, pending):
            if len(alive) < 3:
                break
            vals = [col[i] for i in alive]
            bound = sum(vals) * k // (len(alive) * 1000)   # v * n * 1000 <= sum * k
            if max(vals) > bound:
                kept = list(compress(alive, map(bound.__ge__, vals)))
                if len(kept) >= 2:
                    alive = kept
        bitmap = 0
        for i in alive:
            bitmap |= 1 << i
        return bitmap

    def run(self, now):
        """Compute and publish: the bitmap, then its freshness stamp."""
        bitmap = self.compute(now)
        self.sched[self.w_bitmap] = bitmap
        self.sched[self.w_stamp] = now
        return bitmap
