"""The scheduler cascade and the Python SDK's loop integrations, on real shared state."""

import asyncio
import os
import socket
import subprocess
import time

import pytest

from hermes.layout import Layout, LayoutError

NOW = 10 ** 12   # a fixed "now" for the scheduler, far from zero


@pytest.fixture
def pool(bpf, hermes_obj):
    from hermes.dispatcher import Dispatcher
    with Dispatcher(8, obj=hermes_obj) as d:
        yield d


def workers(d, n=None):
    from hermes.sdk import Worker
    return [Worker(d.state, i) for i in range(n or d.nr_workers)]


def put(d, slot, **fields):
    for f, v in fields.items():
        d.state.wst[d.layout.slot_word(slot, f)] = v


def bits(b):
    return {i for i in range(64) if b >> i & 1}


def test_layout_matches_the_c_header(hermes_obj, tmp_path):
    """Python's offsets (from BTF) equal the C compiler's for the same header."""
    lay = Layout.load(hermes_obj)
    src = tmp_path / "off.c"
    fields = ["%s %s" % (s, f) for s, d in (("hermes_slot", lay.slot),
                                            ("hermes_policy", lay.policy),
                                            ("hermes_group", lay.group)) for f in d]
    src.write_text('#include <stdio.h>\n#include <stddef.h>\n#include "hermes_layout.h"\n'
                   "int main(void){\n" + "".join(
                       'printf("%%zu\\n", offsetof(struct %s, %s));\n' % tuple(f.split())
                       for f in fields) +
                   'printf("%llu\\n", (unsigned long long)HERMES_LAYOUT);\n'
                   'printf("%d %d\\n", HERMES_MAX_WORKERS, HERMES_GROUP_SIZE);\n'
                   'printf("%zu %zu\\n", offsetof(struct hermes_sched, group),'
                   ' sizeof(struct hermes_group));\n'
                   "return 0;}\n")
    exe = tmp_path / "off"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run(["gcc", "-I", os.path.join(root, "bpf"), str(src), "-o", str(exe)], check=True)
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.split("\n")
    py = [d[f] * 8 for _, d in (("s", lay.slot), ("p", lay.policy), ("g", lay.group)) for f in d]
    assert [int(x) for x in out[:len(py)]] == py
    assert int(out[len(py)]) == lay.value
    assert out[len(py) + 1].split() == [str(lay.max_workers), str(lay.group_size)]
    gbase, gsize = map(int, out[len(py) + 2].split())
    assert (gbase, gsize) == (lay.group_base * 8, lay.group_words * 8)


def test_cascade(pool):
    from hermes.sdk.scheduler import Scheduler
    workers(pool)
    sch = Scheduler(pool.state, 0)
    assert bits(sch.compute(NOW)) == set(range(8))
    put(pool, 3, busy_since_ns=NOW - 10 ** 9)            # busy 1 s > 200 ms: hung
    put(pool, 4, busy_since_ns=NOW - 10 ** 6)            # busy 1 ms: fine
    put(pool, 5, busy_since_ns=NOW + 10 ** 9)            # from the future: not a hang
    put(pool, 6, flags=pool.layout.DRAINING)
    assert bits(sch.compute(NOW)) == {0, 1, 2, 4, 5, 7}
    put(pool, 0, conns=100)                              # avg of 6 alive ~16.7; 100 > 25
    put(pool, 1, pending=5)                              # after conns: avg 1, 5 > 1.5
    assert bits(sch.compute(NOW)) == {2, 4, 5, 7}
    put(pool, 7, layout=0)                               # detached
    assert bits(sch.compute(NOW)) == {2, 4, 5}


def test_theta_bounds_the_spread(pool):
    from hermes.sdk.scheduler import Scheduler
    workers(pool, 8)
    for i, c in enumerate([10, 10, 10, 10, 10, 10, 14, 16]):
        put(pool, i, conns=c)                            # avg 11.25: 1.5x = 16.875
    sch = Scheduler(pool.state, 0)
    assert bits(sch.compute(NOW)) == set(range(8))
    pool.state.set_policy(theta=0.25)                    # 1.25x = 14.06
    assert bits(sch.compute(NOW)) == set(range(7))


def test_hostile_counts_only_exclude_the_liar(pool):
    from hermes.sdk.scheduler import Scheduler
    workers(pool)
    put(pool, 2, conns=2 ** 64 - 1, pending=2 ** 64 - 1)
    assert bits(Scheduler(pool.state, 0).compute(NOW)) == set(range(8)) - {2}


def test_idle_is_not_hung(pool):
    """A worker blocked in poll for long is idle: before_poll cleared busy-since."""
    ws = workers(pool)
    for w in ws:
        w.before_poll()
    assert pool.state.slot(0)["busy_since_ns"] == 0
    assert bits(ws[0]._sched.compute(time.monotonic_ns() + 3600 * 10 ** 9)) == set(range(8))


def test_hooks_publish(pool):
    w = workers(pool, 1)[0]
    w.after_poll(3)
    s = pool.state.slot(0)
    assert s["busy_since_ns"] > 0 and s["pending"] == 3 and s["pid"] == os.getpid()
    w.event_done(2)
    w.conn_opened()
    w.conn_opened()
    w.conn_closed()
    w.before_poll()
    s = pool.state.slot(0)
    assert (s["busy_since_ns"], s["pending"], s["conns"]) == (0, 1, 1)
    assert s["heartbeat_ns"] > 0 and pool.state.stamp_ns(0) == s["heartbeat_ns"]


def test_refuses_another_layout(pool):
    from hermes.sdk import Worker
    with pytest.raises(LayoutError, match="does not match"):
        Worker(pool.state, 0, layout_value=pool.layout.value + 1)
    assert pool.state.slot(0)["layout"] == 0      # untouched
    with pytest.raises(LayoutError, match="outside the pool"):
        Worker(pool.state, 8)


def test_selector_accounts_connections_and_events(pool):
    from hermes.sdk import HermesSelector
    import selectors
    w = workers(pool, 1)[0]
    sel = HermesSelector(w)
    pool.listen(slots=[0])
    lst = pool.sockets[0]
    sel.register(lst, selectors.EVENT_READ)
    port = lst.getsockname()[1]
    a, b = socket.socketpair()
    try:
        sel.register(a, selectors.EVENT_READ)
        assert pool.state.slot(0)["conns"] == 1     # the listener is not a connection
        b.send(b"x")
        ready = sel.select(timeout=5)
        assert [k.fileobj for k, _ in ready] == [a]
        s = pool.state.slot(0)
        assert s["pending"] == 1 and s["busy_since_ns"] > 0
        a.recv(1)
        assert sel.select(timeout=0) == []
        s = pool.state.slot(0)
        assert s["pending"] == 0
        sel.unregister(a)
        assert pool.state.slot(0)["conns"] == 0
    finally:
        sel.close()
        a.close()
        b.close()
    assert port


def test_selector_without_hermes_is_plain(monkeypatch):
    from hermes.sdk import HermesSelector
    monkeypatch.delenv("HERMES_WST_FD", raising=False)
    sel = HermesSelector()
    a, b = socket.socketpair()
    try:
        import selectors
        sel.register(a, selectors.EVENT_READ)
        b.send(b"x")
        assert len(sel.select(timeout=5)) == 1 and sel.worker is None
    finally:
        sel.close()
        a.close()
        b.close()


def test_asyncio_instrument(pool):
    from hermes.sdk import HermesSelector, instrument
    w = workers(pool, 1)[0]

    async def main():
        sel = instrument(worker=w)
        assert isinstance(sel, HermesSelector)
        srv = await asyncio.start_server(lambda r, wr: None, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        r, wr = await asyncio.open_connection("127.0.0.1", port)
        await asyncio.sleep(0)
        opened = pool.state.slot(0)["conns"]
        wr.close()
        await wr.wait_closed()
        srv.close()
        await srv.wait_closed()
        return opened

    assert asyncio.run(main()) >= 1
    assert pool.state.slot(0)["heartbeat_ns"] > 0


def test_operator_drain_mask(pool):
    from hermes.sdk.scheduler import Scheduler
    workers(pool)
    pool.state.set_drained(5, True)
    assert pool.state.drained(5)
    assert bits(Scheduler(pool.state, 0).compute(NOW)) == set(range(8)) - {5}
    pool.state.set_drained(5, False)
    assert bits(Scheduler(pool.state, 0).compute(NOW)) == set(range(8))


def test_load_filters_never_leave_fewer_than_two(pool):
    """One survivor would send the dispatcher to the kernel hash, hung workers and all."""
    from hermes.sdk.scheduler import Scheduler
    workers(pool)
    for i in range(2, 8):
        put(pool, i, busy_since_ns=NOW - 10 ** 10)     # six hung
    put(pool, 0, conns=5)
    assert bits(Scheduler(pool.state, 0).compute(NOW)) == {0, 1}
    put(pool, 2, busy_since_ns=0)
    put(pool, 2, pending=9)                             # conns [5, 0, 0] -> {1, 2}
    assert bits(Scheduler(pool.state, 0).compute(NOW)) == {1, 2}
