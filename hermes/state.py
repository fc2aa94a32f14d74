"""The shared state: Worker Status Table, policy and bitmaps, mmap'd.

Every process that takes part (launcher, workers, hermesctl) holds the same two
BPF_F_MMAPABLE arrays as memoryviews of 8-byte words.  Userspace writes are single
word stores; no read-modify-write on shared words (DESIGN.md §5).
"""

import os

from .bpf.maps import Map
from .layout import Layout, LayoutError

# Run-time policy defaults (the one place they are set).
DEFAULTS = {
    "hang_threshold_ms": 200,   # the paper's production hang signal: probes over 200 ms
    "theta": 0.5,               # θ/avg = 0.5 gave the paper's best p99 and throughput
    "stale_limit_ms": 1000,     # a bitmap no scheduler refreshed for 1 s is ignored
    "group_mode": "hash",
}

# What a worker process inherits (the launcher sets these; the SDKs read them).
ENV_SLOT = "HERMES_SLOT"
ENV_WST_FD = "HERMES_WST_FD"
ENV_SCHED_FD = "HERMES_SCHED_FD"
ENV_OBJ = "HERMES_OBJ"

_NS_PER_MS = 1000000


class SharedState:
    """The mmap'd WST (`wst`) and sched map (`sched`), as 'Q' memoryviews."""

    def __init__(self, layout, wst_map, sched_map, stats_map=None):
        self.layout = layout
        self._maps = [wst_map, sched_map] + ([stats_map] if stats_map else [])
        self.stats_map = stats_map
        self.wst = wst_map.mmap().cast("Q")
        self.sched = sched_map.mmap().cast("Q")

    @classmethod
    def from_collection(cls, layout, coll):
        return cls(layout, coll.maps["hermes_wst"], coll.maps["hermes_sched"],
                   coll.maps["hermes_stats"])

    @classmethod
    def from_env(cls, env=None, layout=None):
        """Attach to the state a launcher handed over; None outside Hermes."""
        env = os.environ if env is None else env
        if ENV_WST_FD not in env:
            return None
        layout = layout or Layout.load(env.get(ENV_OBJ))
        try:
            wst = Map.from_fd(int(env[ENV_WST_FD]))
            sched = Map.from_fd(int(env[ENV_SCHED_FD]))
        except (KeyError, ValueError) as e:
            raise LayoutError("bad Hermes environment: %s" % e) from None
        return cls(layout, wst, sched)

    def close(self):
        self.wst.release()
        self.sched.release()
        for m in self._maps:
            m.close()

    # --- policy ------------------------------------------------------------------
    def init_policy(self, nr_workers, **policy):
        """Set the pool size and policy; the layout word goes last, so the
        dispatcher never acts on a half-written policy."""
        lay = self.layout
        if not 0 < nr_workers <= lay.max_workers:
            raise ValueError("workers must be 1..%d" % lay.max_workers)
        s = self.sched
        s[lay.policy_word("layout")] = 0
        self.set_nr_workers(nr_workers)
        self.set_policy(**dict(DEFAULTS, **policy))
        s[lay.policy_word("layout")] = lay.value

    def set_nr_workers(self, n):
        """Resize the pool; groups grow first so no worker is ever outside one."""
        lay = self.layout
        if not 0 < n <= lay.max_workers:
            raise ValueError("workers must be 1..%d" % lay.max_workers)
        self.sched[lay.policy_word("nr_groups")] = -(-n // lay.group_size)
        self.sched[lay.policy_word("nr_workers")] = n

    def set_policy(self, hang_threshold_ms=None, theta=None, stale_limit_ms=None,
                   group_mode=None):
        lay, s = self.layout, self.sched
        if hang_threshold_ms is not None:
            if not hang_threshold_ms > 0:
                raise ValueError("hang threshold must be > 0 ms")
            s[lay.policy_word("hang_threshold_ns")] = int(hang_threshold_ms * _NS_PER_MS)
        if theta is not None:
            if not 0 <= theta <= 100:
                raise ValueError("theta must be within 0..100")
            s[lay.policy_word("theta_permille")] = int(round(theta * 1000))
        if stale_limit_ms is not None:
            if not stale_limit_ms > 0:
                raise ValueError("stale limit must be > 0 ms")
            s[lay.policy_word("stale_limit_ns")] = int(stale_limit_ms * _NS_PER_MS)
        if group_mode is not None:
            if group_mode not in lay.group_modes:
                raise ValueError("group mode must be one of %s" % ", ".join(lay.group_modes))
            s[lay.policy_word("group_mode")] = lay.group_modes[group_mode]

    def policy(self):
        lay, s = self.layout, self.sched
        mode = s[lay.policy_word("group_mode")]
        return {
            "layout": s[lay.policy_word("layout")],
            "nr_workers": s[lay.policy_word("nr_workers")],
            "nr_groups": s[lay.policy_word("nr_groups")],
            "hang_threshold_ms": s[lay.policy_word("hang_threshold_ns")] / _NS_PER_MS,
            "theta": s[lay.policy_word("theta_permille")] / 1000,
            "stale_limit_ms": s[lay.policy_word("stale_limit_ns")] / _NS_PER_MS,
            "group_mode": next((k for k, v in lay.group_modes.items() if v == mode), mode),
        }

    # --- reading ---------------------------------------------------------------------
    def slot(self, i):
        """One worker's slot as a dict (a snapshot; fields may be mid-update)."""
        lay = self.layout
        base = i * lay.slot_words
        words = self.wst[base:base + lay.slot_words].tolist()
        return {f: words[w] for f, w in lay.slot.items()}

    def bitmap(self, g):
        return self.sched[self.layout.group_word(g, "bitmap")]

    def stamp_ns(self, g):
        return self.sched[self.layout.group_word(g, "stamp_ns")]

    def _mask(self, field, slot):
        lay = self.layout
        return lay.group_word(slot // lay.group_size, field), 1 << (slot % lay.group_size)

    def _set_mask(self, field, slot, on):
        # A read-modify-write, safe because the launcher is the only writer of
        # both masks (DESIGN.md §5 forbids it only on words others write).
        w, bit = self._mask(field, slot)
        self.sched[w] = (self.sched[w] | bit) if on else (self.sched[w] & ~bit)

    def set_drained(self, slot, drained):
        """Take a worker out of (or back into) dispatch: `hermesctl drain`."""
        self._set_mask("drain_mask", slot, drained)

    def drained(self, slot):
        w, bit = self._mask("drain_mask", slot)
        return bool(self.sched[w] & bit)

    def set_stuck(self, slot, stuck):
        """The launcher's verdict on a worker that sleeps on a full accept queue."""
        self._set_mask("stuck_mask", slot, stuck)

    def stuck(self, slot):
        w, bit = self._mask("stuck_mask", slot)
        return bool(self.sched[w] & bit)

    def stats(self):
        """Kernel counters summed over CPUs: (dispatched per slot, {reason: n})."""
        lay = self.layout
        if self.stats_map is None:
            raise LayoutError("this process has no handle on the kernel's counters")
        n = self.policy()["nr_workers"]

        def total(key):
            raw = self.stats_map.lookup(key.to_bytes(4, "little")) or b""
            return sum(int.from_bytes(raw[i:i + 8], "little") for i in range(0, len(raw), 8))
        dispatched = [total(i) for i in range(n)]
        reasons = {name: total(lay.max_workers + i) for i, name in enumerate(lay.stats)}
        return dispatched, reasons
