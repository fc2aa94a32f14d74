"""The C SDK (hermes/sdk/hermes.h): C and Python workers in one pool, one scheduler.

The C worker (tests/c/epoll_worker.c) is compiled with gcc at test time; the
Python twin is tests/py_worker.py.  Workers are real processes inheriting their
listening socket and the map fds, as a launcher would start them.
"""

import array
import collections
import os
import random
import select
import socket
import subprocess
import sys
import time

import pytest

from hermes.layout import LayoutError

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
CFLAGS = ["-std=c11", "-O2", "-Wall", "-Wextra", "-Wpedantic", "-Werror",
          "-I", os.path.join(ROOT, "bpf")]


def gcc(out, *defines):
    subprocess.run(["gcc", *CFLAGS, *defines, os.path.join(TESTS, "c", "epoll_worker.c"),
                    "-o", str(out)], check=True)
    return str(out)


@pytest.fixture(scope="module")
def cworker(tmp_path_factory):
    return gcc(tmp_path_factory.mktemp("csdk") / "epoll_worker")


class Procs:
    """Worker processes, each reaped by pid when the test ends, however it ends."""

    def __init__(self):
        self.procs = []

    def start(self, argv, env=None, fds=(), stdin=subprocess.DEVNULL):
        env = dict(os.environ, PYTHONPATH=ROOT, **(env or {}))
        p = subprocess.Popen(argv, env=env, pass_fds=fds, stdin=stdin,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.procs.append(p)
        return p

    def line(self, p, timeout=30):
        """The next line `p` prints: its readiness signal or an answer."""
        ready, _, _ = select.select([p.stdout], [], [], timeout)
        out = p.stdout.readline() if ready else b""
        if not out:
            p.kill()
            pytest.fail("%s printed nothing: %s" % (p.args, p.stderr.read().decode()))
        return out.decode().strip()

    def stop(self, p, timeout=30):
        p.terminate()
        return p.wait(timeout)

    def close(self):
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            for f in (p.stdin, p.stdout, p.stderr):
                try:
                    if f:
                        f.close()
                except BrokenPipeError:
                    pass            # input the dead process never read


@pytest.fixture
def procs():
    ps = Procs()
    try:
        yield ps
    finally:
        ps.close()


def request(port):
    """One connection: which (slot, pid) answered it."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
        c.sendall(b"hello\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = c.recv(64)
            assert chunk, "connection closed without an answer (got %r)" % data
            data += chunk
    _, slot, _, pid = data.split()
    return int(slot), int(pid)


def serve(port, n, pids):
    served = collections.Counter()
    for _ in range(n):
        slot, pid = request(port)
        assert pids[slot] == pid, "slot %d answered by pid %d, not its worker" % (slot, pid)
        served[slot] += 1
    return served


def start_pool_worker(procs, d, slot, argv):
    env, fds = d.worker_env(slot)
    sock = d.sockets[slot].fileno()
    return procs.start(argv + [str(sock)], env, fds + (sock,))


def test_c_and_python_workers_share_a_pool(bpf, hermes_obj, cworker, procs):
    from hermes.dispatcher import Dispatcher
    # θ = 100 and a long hang threshold: the cascade keeps every live worker
    # eligible, so the kernel hash (which knows no drain mask) never decides.
    with Dispatcher(4, obj=hermes_obj, theta=100, hang_threshold_ms=60000) as d:
        port = d.listen()
        pyworker = [sys.executable, os.path.join(TESTS, "py_worker.py")]
        ps = {slot: start_pool_worker(procs, d, slot, argv)
              for slot, argv in ((0, [cworker]), (1, [cworker]), (2, pyworker), (3, pyworker))}
        for p in ps.values():
            assert procs.line(p) == "ready"
        pids = {slot: p.pid for slot, p in ps.items()}

        for slot, p in ps.items():          # both kinds publish their slots
            s = d.state.slot(slot)
            assert s["pid"] == p.pid
            assert s["layout"] == d.layout.value
            assert s["generation"] == 1
            assert 0 < s["heartbeat_ns"] <= time.monotonic_ns()

        # All eligible: P(a slot gets none of 200) <= 0.75**200 ~ 1e-25.
        total = serve(port, 200, pids)
        assert set(total) == {0, 1, 2, 3}, total

        d.state.set_drained(0, True)        # a C worker out of the bitmap
        out = serve(port, 150, pids)
        assert out[0] == 0, out
        assert out[1] > 0 and out[2] + out[3] > 0, out      # 0.67**150 ~ 1e-26
        total += out

        d.state.set_drained(0, False)       # put back, it receives again
        back = serve(port, 200, pids)
        assert back[0] > 0, back
        total += back

        dispatched, reasons = d.state.stats()
        assert dispatched == [total[i] for i in range(4)], (dispatched, reasons)

        for slot, p in ps.items():          # SIGTERM: each detaches and exits cleanly
            assert procs.stop(p) == 0, p.stderr.read().decode()
            assert d.state.slot(slot)["layout"] == 0


def state_round(d, rng, now):
    """A random, deterministic state for the whole pool: hostile half the time,
    otherwise healthy but for at most one thing (the Python fast path's cases)."""
    lay, wst, sched = d.layout, d.state.wst, d.state.sched
    thresh_ms = rng.choice([1, 200, 5000])
    thresh = thresh_ms * 10 ** 6
    d.state.set_policy(hang_threshold_ms=thresh_ms, theta=rng.choice([0, 0.1, 0.5, 1, 100]))
    d.state.set_nr_workers(rng.choice([100, 100, 128, 80, 64, 30, 8, 3]))   # pools resize
    masks = {(g, m): 0 for g in range(2) for m in ("drain_mask", "stuck_mask")}
    slots = {}
    if rng.random() < 0.5:
        def count():
            return rng.choice([0, 0, 1, 1, 2, 3, 5, rng.randrange(1000), 2 ** 63, 2 ** 64 - 1])

        for slot in range(128):
            slots[slot] = {
                "layout": rng.choice([lay.value] * 8 + [0, lay.value ^ 3]),
                "flags": rng.choice([0] * 8 + [lay.DRAINING, lay.OBSERVED,
                                               lay.DRAINING | lay.OBSERVED]),
                "busy_since_ns": rng.choice([0, 0, now, 1, now - thresh, now - thresh + 1,
                                             now - rng.randrange(2 * thresh),
                                             now + rng.randrange(1, 10 ** 9)]),
                "conns": count(),
                "pending": count(),
            }
        for key in masks:       # ~1 in 8 out, for each reason
            masks[key] = rng.getrandbits(64) & rng.getrandbits(64) & rng.getrandbits(64)
    else:
        c, p = rng.randrange(50), rng.randrange(5)
        for slot in range(128):
            slots[slot] = {"layout": lay.value, "flags": 0, "conns": c + rng.randrange(2),
                           "pending": p + rng.randrange(2),
                           "busy_since_ns": rng.choice([0, now - rng.randrange(thresh)])}
        victim, what = rng.randrange(128), rng.randrange(10)
        v = slots[victim]
        if what == 1:
            masks[victim // 64, rng.choice(["drain_mask", "stuck_mask"])] = 1 << victim % 64
        elif what == 2:
            v["flags"] = rng.choice([lay.DRAINING, lay.OBSERVED])
        elif what == 3:
            v["layout"] = 0
        elif what in (4, 5):
            v["busy_since_ns"] = now - thresh + (what == 5)    # hung / just not
        elif what in (6, 7):
            v["conns" if what == 6 else "pending"] = rng.randrange(3 * c + 10)
    for slot, fields in slots.items():
        for f, v in fields.items():
            wst[lay.slot_word(slot, f)] = v
    for (g, m), v in masks.items():
        sched[lay.group_word(g, m)] = v


def test_c_scheduler_matches_python(bpf, hermes_obj, cworker, procs):
    """Same state, same now: the C scheduler publishes what Scheduler.compute() says."""
    from hermes.dispatcher import Dispatcher
    from hermes.sdk.scheduler import Scheduler
    rng = random.Random(3)
    with Dispatcher(128, obj=hermes_obj) as d:    # resized to 30..128 below
        probes = {}
        for slot in (5, 70):
            env, fds = d.worker_env(slot)
            probes[slot // d.layout.group_size] = procs.start(
                [cworker, "sched"], env, fds, stdin=subprocess.PIPE)
        for p in probes.values():
            assert procs.line(p) == "ready"     # attached: the pool may shrink now
        seen, everyone = set(), 0
        for _ in range(600):
            now = rng.randrange(2 ** 40, 2 ** 62)
            state_round(d, rng, now)
            nr = d.state.policy()["nr_workers"]
            for g, p in probes.items():
                p.stdin.write(b"%d\n" % now)
                p.stdin.flush()
                c_bitmap = int(procs.line(p))
                py_bitmap = Scheduler(d.state, g).compute(now)
                assert c_bitmap == py_bitmap, (g, bin(c_bitmap), bin(py_bitmap))
                assert d.state.bitmap(g) == c_bitmap and d.state.stamp_ns(g) == now
                seen.add(c_bitmap)
                size = max(0, min(64, nr - 64 * g))
                everyone += size > 0 and c_bitmap == (1 << size) - 1
        assert len(seen) > 300     # the states really differ
        assert everyone > 50       # and Python's all-eligible fast path was taken


def test_c_worker_of_another_layout_is_refused(bpf, hermes_obj, tmp_path, procs):
    from hermes.dispatcher import Dispatcher
    exe = gcc(tmp_path / "epoll_worker_v2", "-DHERMES_LAYOUT_VERSION=2")
    with Dispatcher(4, obj=hermes_obj) as d:
        d.listen(slots=[1])
        base = 1 * d.layout.slot_words
        sentinel = list(range(0xdead00, 0xdead00 + d.layout.slot_words))
        d.state.wst[base:base + len(sentinel)] = memoryview(array.array("Q", sentinel))
        p = start_pool_worker(procs, d, 1, [exe])
        _, err = p.communicate(timeout=30)
        assert p.returncode == 2
        err = err.decode()
        assert "does not match" in err and "(version 1)" in err and "(version 2)" in err, err
        assert d.state.wst[base:base + len(sentinel)].tolist() == sentinel


def test_python_worker_of_another_layout_is_refused(bpf, hermes_obj):
    from hermes.dispatcher import Dispatcher
    from hermes.sdk import Worker
    with Dispatcher(4, obj=hermes_obj) as d:
        before = d.state.slot(1)
        v2 = (d.layout.value >> 32) << 32 | 2
        with pytest.raises(LayoutError) as e:
            Worker(d.state, 1, layout_value=v2)
        assert "(version 1)" in str(e.value) and "(version 2)" in str(e.value)
        assert "rebuild the worker" in str(e.value)
        assert d.state.slot(1) == before


def test_c_worker_runs_unchanged_outside_hermes(cworker, procs):
    with socket.socket() as lsock:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen()
        p = procs.start([cworker, str(lsock.fileno())], fds=(lsock.fileno(),))
        assert procs.line(p) == "ready"
        assert request(lsock.getsockname()[1]) == (-1, p.pid)
        assert procs.stop(p) == 0
    bad = procs.start([cworker, "sched"], env={"HERMES_WST_FD": "x", "HERMES_SLOT": "0",
                                               "HERMES_SCHED_FD": "4"})
    _, err = bad.communicate(timeout=30)
    assert bad.returncode == 2 and b"bad Hermes environment" in err
