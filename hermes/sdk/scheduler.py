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


class Scheduler:
    """Computes and publishes one group's bitmap from the mmap'd state."""

    __slots__ = ("wst", "sched", "first", "size", "nr", "w_nr", "lo", "hi", "stride", "busy",
                 "conns", "pending", "flags", "lay", "value", "draining", "w_bitmap", "w_stamp",
                 "w_drain", "w_stuck", "w_thresh", "w_theta")

    def __init__(self, state, group):
        lay = state.layout
        self.wst, self.sched = state.wst, state.sched
        self.first = group * lay.group_size
        self.size = lay.group_size
        self.stride = lay.slot_words
        self.w_nr = lay.policy_word("nr_workers")
        self.nr = None
        self.busy, self.conns = lay.slot["busy_since_ns"], lay.slot["conns"]
        self.pending, self.flags = lay.slot["pending"], lay.slot["flags"]
        self.lay, self.value = lay.slot["layout"], lay.value
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
        self.lo, self.hi = self.first * self.stride, (self.first + n) * self.stride

    def compute(self, now):
        """The bitmap for the group's current state (publishes nothing)."""
        sched = self.sched
        nr = sched[self.w_nr]
        if nr != self.nr:
            self._bounds(nr)
        wst, lo, hi, s = self.wst, self.lo, self.hi, self.stride
        # One strided read per field the cascade uses, not whole slots.
        lays = wst[lo + self.lay:hi:s].tolist()
        flags = wst[lo + self.flags:hi:s].tolist()
        busy = wst[lo + self.busy:hi:s].tolist()
        conns = wst[lo + self.conns:hi:s].tolist()
        pending = wst[lo + self.pending:hi:s].tolist()
        thresh = sched[self.w_thresh]
        out = sched[self.w_drain] | sched[self.w_stuck]
        k = 1000 + sched[self.w_theta]
        value, n = self.value, len(busy)
        # Fast path, the usual case: everyone attached, none out or hung, no count
        # over its bound.  Built-in list methods instead of a loop; it only answers
        # "all of them" when the cascade below would, and any doubt falls through.
        if (n and lays.count(value) == n and flags.count(0) == n
                and not out & ((1 << n) - 1)
                and min(filter(None, busy), default=now) > now - thresh
                and max(conns) * n * 1000 <= sum(conns) * k
                and max(pending) * n * 1000 <= sum(pending) * k):
            return (1 << n) - 1
        # A timestamp from the future (clock skew, garbage) is not a hang.
        draining = self.draining
        alive = [i for i, b in enumerate(busy)
                 if lays[i] == value and not flags[i] & draining and not out >> i & 1
                 and (b == 0 or now <= b or now - b < thresh)]
        for col in (conns, pending):
            if len(alive) < 3:
                break
            vals = [col[i] for i in alive]
            limit = sum(vals) * k
            n = len(alive) * 1000
            kept = [i for i, v in zip(alive, vals) if v * n <= limit]
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
