"""Acceptance of the dispatcher (issue 3): the real kernel, real sockets, loopback.

The dispatch decision is made at SYN time, so a connection waits in the accept
queue of the listener that the program (or the kernel's hash) chose: accepting
non-blocking on each slot's listener tells which slot got it.  Statistical bounds
are Chernoff bounds that a fair draw misses with probability under 1e-12.
"""

import math
import os
import selectors
import socket
import struct
import subprocess
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BACKLOG = 4096
# Each decision ends in exactly one of these; "stale" and "recheck" come on top.
DECISIONS = ("selected", "no_state", "few", "hung", "no_socket")
STUCK_NS = 10 * 10 ** 9
# Workers run on both Pythons the project supports, when both are here.
PYTHONS = [sys.executable] + [p for p in ("/usr/bin/python3",)
                              if os.path.exists(p) and not os.path.samefile(p, sys.executable)]
LINGER_RESET = struct.pack("ii", 1, 0)     # struct linger {l_onoff=1, l_linger=0}


def floor(n, p):
    """A count that Binomial(n, p) falls below with probability < 1e-12."""
    mu = n * p
    return max(1, int(mu - math.sqrt(2 * mu * math.log(1e12))))


class Net:
    """Clients and accepted sockets, all closed at teardown."""

    def __init__(self):
        self.clients, self.accepted = [], []

    def connect(self, n, port, host="127.0.0.1"):
        out = []
        for _ in range(n):
            c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.clients.append(c)
            c.settimeout(10)
            c.connect((host, port))       # a refusal or a reset fails the test here
            out.append(c)
        return out

    def accept(self, d, n, timeout=10):
        """Exactly n connections from d's listeners, as {slot: [accepted sockets]}."""
        got = {slot: [] for slot in d.sockets}
        total = 0
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            for slot, s in d.sockets.items():
                s.setblocking(False)
                sel.register(s, selectors.EVENT_READ, slot)
            while total < n:
                ready = sel.select(max(0, deadline - time.monotonic()))
                if not ready:
                    break
                for key, _ in ready:
                    total += self._drain(key.fileobj, got[key.data])
        assert total == n, "%d connections reached a listener, %d were made" % (total, n)
        for s in d.sockets.values():
            with pytest.raises(BlockingIOError):
                s.accept()
        return got

    def _drain(self, listener, into):
        k = 0
        while True:
            try:
                a, _ = listener.accept()
            except BlockingIOError:
                return k
            self.accepted.append(a)
            a.settimeout(10)
            into.append(a)
            k += 1

    def close(self):
        """Clients by reset, then servers: no TIME_WAIT is left to hold a port
        (the tight-loop test makes thousands of connections a second)."""
        for c in self.clients:
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
            c.close()
        for a in self.accepted:
            a.close()
        self.accepted.clear()
        self.clients.clear()


def roundtrip(clients, got):
    """Every client completes a request and its response."""
    for c in clients:
        c.sendall(b"?")
    for conns in got.values():
        for a in conns:
            assert a.recv(1) == b"?"
            a.sendall(b"!")
    for c in clients:
        assert c.recv(1) == b"!"


def counts(got):
    return {slot: len(v) for slot, v in got.items()}


@pytest.fixture
def net():
    n = Net()
    yield n
    n.close()


@pytest.fixture
def pool(bpf, hermes_obj):
    """pool(nr_workers, host=..., slots=..., **policy) -> a listening Dispatcher (.port)."""
    from hermes.dispatcher import Dispatcher
    made = []

    def make(nr, host="127.0.0.1", slots=None, **policy):
        d = Dispatcher(nr, obj=hermes_obj, **policy)
        made.append(d)
        d.port = d.listen(host, 0, BACKLOG, slots)
        return d
    yield make
    for d in made:
        d.close()


def workers(d):
    """An in-process Worker for every slot of d."""
    from hermes.sdk import Worker
    return [Worker(d.state, i) for i in range(d.nr_workers)]


def publish(d, g, bitmap, stamp_ns=None):
    """Write a group's bitmap as a scheduler would (or an old one, with stamp_ns)."""
    lay, s = d.layout, d.state.sched
    s[lay.group_word(g, "bitmap")] = bitmap
    s[lay.group_word(g, "stamp_ns")] = time.monotonic_ns() if stamp_ns is None else stamp_ns


def stick(d, slot):
    """Back-date a busy worker's loop start: stuck for 10 s, without waiting 10 s."""
    w = d.layout.slot_word(slot, "busy_since_ns")
    assert d.state.wst[w], "the worker must be busy (after_poll) to be stuck"
    d.state.wst[w] = time.monotonic_ns() - STUCK_NS


def decisions(reasons):
    return sum(reasons[r] for r in DECISIONS)


# --- eligibility -------------------------------------------------------------------------
def test_all_eligible_spread_over_all(pool, net):
    d = pool(8)
    for w in workers(d):
        w.before_poll()
    assert d.state.bitmap(0) == 0xFF
    n = 800
    clients = net.connect(n, d.port)
    got = net.accept(d, n)
    roundtrip(clients, got)
    c = counts(got)
    assert min(c.values()) >= floor(n, 1 / 8), c
    dispatched, reasons = d.state.stats()
    assert reasons["selected"] == decisions(reasons) == n
    assert dispatched == [c[i] for i in range(8)]     # the kernel's count is what we saw


def test_worker_out_of_bitmap_gets_none_then_again(pool, net):
    d = pool(4)
    ws = workers(d)
    ws[2].set_draining()
    ws[0].before_poll()
    assert d.state.bitmap(0) == 0b1011
    n = 300
    net.connect(n, d.port)
    c = counts(net.accept(d, n))
    assert c[2] == 0 and min(c[i] for i in (0, 1, 3)) >= floor(n, 1 / 3), c

    ws[2].set_draining(False)
    ws[0].before_poll()
    assert d.state.bitmap(0) == 0b1111
    clients = net.connect(n, d.port)
    got = net.accept(d, n)
    roundtrip(clients, got)
    assert counts(got)[2] >= floor(n, 1 / 4), counts(got)


@pytest.mark.parametrize("bits", [(0, 63), (5, 31, 32, 33, 62), (7, 8, 15, 16, 47, 48, 56)])
def test_sparse_bitmap_selects_exactly_its_workers(pool, net, bits):
    """The n-th set bit search, at byte and word edges: each named worker gets its
    share, no other gets any."""
    d = pool(64)
    publish(d, 0, sum(1 << b for b in bits))
    n = 100 * len(bits)
    net.connect(n, d.port)
    c = counts(net.accept(d, n))
    assert {s for s, k in c.items() if k} == set(bits), c
    assert min(c[b] for b in bits) >= floor(n, 1 / len(bits)), c
    assert d.state.stats()[1]["selected"] == n


def test_operator_drain_mask_honoured_by_the_kernel(pool, net):
    """The launcher's drain mask applies at once, before any scheduler turn."""
    d = pool(4)
    for w in workers(d):
        w.before_poll()
    d.state.set_drained(1, True)
    assert d.state.bitmap(0) == 0b1111
    n = 300
    net.connect(n, d.port)
    c = counts(net.accept(d, n))
    assert c[1] == 0 and min(c[i] for i in (0, 2, 3)) >= floor(n, 1 / 3), c
    assert d.state.stats()[1]["selected"] == n


def test_hung_worker_skipped_by_the_kernel_recheck(pool, net):
    d = pool(4, hang_threshold_ms=100)
    ws = workers(d)
    for w in ws:
        w.before_poll()
    ws[1].after_poll(1)           # woke up, and never came back to poll
    stick(d, 1)
    # No scheduler has run since: the bitmap still names worker 1, and is fresh.
    assert d.state.bitmap(0) == 0b1111
    n = 400
    clients = net.connect(n, d.port)
    got = net.accept(d, n)
    roundtrip(clients, got)
    c = counts(got)
    assert c[1] == 0, c
    _, reasons = d.state.stats()
    assert reasons["selected"] == decisions(reasons) == n
    assert reasons["recheck"] >= floor(n, 1 / 4), reasons   # first picks of worker 1

    ws[1].event_done()
    ws[1].before_poll()           # back to its poll: idle, and its own scheduler keeps it
    assert d.state.bitmap(0) == 0b1111
    net.connect(n, d.port)
    assert counts(net.accept(d, n))[1] >= floor(n, 1 / 4)


# --- the kernel's hash decides, and nothing is refused ---------------------------------
def _stale(ahead):
    def setup(d, ws):
        ws[3].after_poll(1)
        stick(d, 3)
        publish(d, 0, 0b0001, stamp_ns=time.monotonic_ns() + ahead)
    return setup


FALLBACKS = {
    # An old bitmap is ignored: the whole group, with the hang re-check; so is
    # one stamped far in the future (garbage, not clock lag).
    "stale": (_stale(-STUCK_NS), "selected", {0: 1 / 3, 1: 1 / 3, 2: 1 / 3, 3: 0}),
    "future": (_stale(STUCK_NS), "selected", {0: 1 / 3, 1: 1 / 3, 2: 1 / 3, 3: 0}),
    "empty": (lambda d, ws: publish(d, 0, 0), "few", {i: 1 / 4 for i in range(4)}),
    "single": (lambda d, ws: publish(d, 0, 0b0100), "few", {i: 1 / 4 for i in range(4)}),
    "no_state": (lambda d, ws: d.state.sched.__setitem__(d.layout.policy_word("layout"), 0),
                 "no_state", {i: 1 / 4 for i in range(4)}),
}


@pytest.mark.parametrize("case", sorted(FALLBACKS))
def test_fallback_never_refuses(pool, net, case):
    setup, reason, share = FALLBACKS[case]
    d = pool(4, stale_limit_ms=1000)
    ws = workers(d)
    for w in ws:
        w.before_poll()
    setup(d, ws)
    n = 400
    clients = net.connect(n, d.port)
    got = net.accept(d, n)
    roundtrip(clients, got)
    c = counts(got)
    for slot, p in share.items():
        assert c[slot] >= floor(n, p) if p else c[slot] == 0, c
    _, reasons = d.state.stats()
    assert reasons[reason] == decisions(reasons) == n, reasons
    if case in ("stale", "future"):
        assert reasons["stale"] == n and reasons["recheck"] >= floor(n, 1 / 4), reasons


def test_slot_without_socket_falls_back_to_the_hash(pool, net):
    d = pool(4, slots=[0, 1, 3])
    for w in workers(d):
        w.before_poll()
    publish(d, 0, 0b0110)         # 1 and 2 eligible; 2 has no socket
    n = 400
    clients = net.connect(n, d.port)
    got = net.accept(d, n)
    roundtrip(clients, got)
    c = counts(got)
    dispatched, reasons = d.state.stats()
    assert dispatched[2] == 0 and dispatched[1] == reasons["selected"]
    assert reasons["selected"] + reasons["no_socket"] == decisions(reasons) == n
    assert reasons["no_socket"] >= floor(n, 1 / 2), reasons
    # Slots 0 and 3 are not eligible: what they get, the kernel's hash gave them.
    # (Not each: the hash that picked slot 2 picks the kernel's socket too, so
    # the fallbacks lean towards the upper sockets.)
    assert c[0] + c[3] >= floor(n, 1 / 6), c


# --- live state: worker processes writing while connections arrive ---------------------
def _readline(proc, timeout=30):
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        assert sel.select(timeout), "worker %d said nothing" % proc.pid
    return proc.stdout.readline().decode()


def test_workers_writing_in_a_tight_loop(pool, net):
    d = pool(4)
    procs = []
    try:
        for slot in range(4):
            env, fds = d.worker_env(slot)
            env = dict(os.environ, PYTHONPATH=ROOT, **env)
            procs.append(subprocess.Popen(
                [PYTHONS[slot % len(PYTHONS)], os.path.join(HERE, "dispatch_worker.py")],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, pass_fds=fds))
        for p in procs:
            assert _readline(p) == "ready\n"
        made, seen = 0, {slot: 0 for slot in range(4)}
        end = time.monotonic() + 2
        while time.monotonic() < end:
            batch = net.connect(32, d.port)
            made += len(batch)
            got = net.accept(d, len(batch))
            for slot, conns in got.items():
                seen[slot] += len(conns)
            net.close()
        for p in procs:
            p.stdin.close()
        results = [_readline(p).split() for p in procs]
        assert [p.wait(30) for p in procs] == [0] * 4
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            p.stdout.close()
            if not p.stdin.closed:
                p.stdin.close()
    # Every connection reached a listener (net.accept checks it batch by batch) ...
    assert sum(seen.values()) == made > 0
    # ... while the workers ran and their bitmap kept changing.
    assert all(int(it) >= 256 for it, _ in results), results
    assert sum(int(ch) for _, ch in results) > 4, results
    dispatched, reasons = d.state.stats()
    assert decisions(reasons) == made, (reasons, made)
    assert sum(dispatched) == reasons["selected"] > 0
    assert all(dispatched[s] <= seen[s] for s in range(4)), (dispatched, seen)


# --- groups ----------------------------------------------------------------------------
def _three_groups(pool, **kw):
    """130 workers (groups of 64, 64 and 2); every third of the first 128 drained."""
    d = pool(130, **kw)
    ws = workers(d)
    out = {i for i in range(128) if i % 3 == 1}
    for i in out:
        ws[i].set_draining()
    for g in range(3):
        ws[64 * g].before_poll()
    eligible = set(range(130)) - out
    for g in range(3):
        assert d.state.bitmap(g) == sum(1 << (i - 64 * g) for i in eligible if i // 64 == g)
    return d, eligible


def test_groups_130_workers(pool, net):
    d, eligible = _three_groups(pool)
    n = 900
    clients = net.connect(n, d.port)
    got = net.accept(d, n)
    roundtrip(clients, got)
    c = counts(got)
    assert {s for s, k in c.items() if k} <= eligible
    for g in range(3):
        assert sum(k for s, k in c.items() if s // 64 == g) >= floor(n, 1 / 3), c
    dispatched, reasons = d.state.stats()
    assert reasons["selected"] == decisions(reasons) == n
    assert dispatched == [c[i] for i in range(130)]


def test_groups_locality(pool, net):
    """One destination (address, port), one group; the 4-tuple picks within it."""
    d, eligible = _three_groups(pool, host="0.0.0.0", group_mode="locality")
    dests = ["127.0.0.%d" % i for i in range(1, 61)]
    per = 8
    clients = []
    for a in dests:
        clients += net.connect(per, d.port, a)
    n = len(clients)
    got = net.accept(d, n)
    roundtrip(clients, got)
    by_dest = {}
    for slot, conns in got.items():
        assert not conns or slot in eligible
        for a in conns:
            by_dest.setdefault(a.getsockname()[0], []).append(slot)
    assert sorted(by_dest) == sorted(dests)
    groups = {a: {s // 64 for s in slots} for a, slots in by_dest.items()}
    assert all(len(g) == 1 for g in groups.values()), groups
    # 60 destinations over 3 groups: one left empty has odds 3 * (2/3)**60 < 1e-10.
    assert set().union(*groups.values()) == {0, 1, 2}
    assert any(len(set(slots)) > 1 for slots in by_dest.values())
    _, reasons = d.state.stats()
    assert reasons["selected"] == decisions(reasons) == n


# --- migrate ---------------------------------------------------------------------------
def test_migrate_closing_listener_loses_nothing(pool, net):
    from hermes.bpf import NotSupported, features
    try:
        features.require("sk_reuseport/migrate")
    except NotSupported as e:
        pytest.skip(str(e))         # "...: not supported: needs Linux 5.14"
    d = pool(4)
    assert d.migrate
    for w in workers(d):
        w.before_poll()
    n = 400
    clients = net.connect(n, d.port)
    dispatched, reasons = d.state.stats()
    assert reasons["selected"] == n
    # Nothing accepted yet: the kernel's count is what waits in each accept queue.
    k = max(range(4), key=dispatched.__getitem__)
    queued = dispatched[k]
    d.sockets.pop(k).close()
    got = net.accept(d, n)            # all of them, on the three live listeners
    roundtrip(clients, got)
    _, reasons = d.state.stats()
    assert reasons["migrated"] == queued > 0
