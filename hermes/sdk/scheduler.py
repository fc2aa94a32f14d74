"""The scheduler (the paper's Algorithm 1), run by every worker for its group.

A cascade of filters over the group's workers, written as one bitmap store:
  1. attached, not draining (itself or by the operator's drain mask), not found
     stuck by the launcher, and not busy past the hang threshold;
  2. connections <= avg * (1 + θ);
  3. pending events <= avg * (1 + θ).
The paper writes `< avg + θ`; with "<=" a group where every count is equal (say,
all zero) keeps everyone instead of no one.  Averages are over the survivors of
the previous filter.  Integer arithmetic throughout: x * n * 1000 <= sum * (1000 + θ‰).
"""


class Scheduler:
    """Computes and publishes one group's bitmap from the mmap'd state."""

    __slots__ = ("wst", "sched", "first", "size", "nr", "w_nr", "lo", "hi", "stride", "busy", "conns", "pending", "flags",
                 "lay", "value", "draining", "w_bitmap", "w_stamp", "w_drain", "w_stuck", "w_thresh",
                 "w_theta")

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
        nr = self.sched[self.w_nr]
        if nr != self.nr:
            self._bounds(nr)
        words = self.wst[self.lo:self.hi].tolist()
        s = self.stride
        thresh = self.sched[self.w_thresh]
        busy = words[self.busy::s]
        flags = words[self.flags::s]
        lays = words[self.lay::s]
        value, draining = self.value, self.draining
        drained = self.sched[self.w_drain] | self.sched[self.w_stuck]
        # A timestamp from the future (clock skew, garbage) is not a hang.
        alive = [i for i, b in enumerate(busy)
                 if lays[i] == value and not flags[i] & draining and not drained >> i & 1
                 and (b == 0 or now <= b or now - b < thresh)]
        if len(alive) > 1:
            k = 1000 + self.sched[self.w_theta]
            for field in (self.conns, self.pending):
                col = words[field::s]
                vals = [col[i] for i in alive]
                limit = sum(vals) * k
                n = len(alive) * 1000
                alive = [i for i, v in zip(alive, vals) if v * n <= limit]
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
