"""Zero-loss lifecycle under steady load: crash, reload, scale down, scale up.

Clients make one request per connection, several at a time, each with a 2 s
budget; a request fails if it is refused, reset, or not answered in time.
"""

import os
import signal
import socket
import subprocess
import sys
import threading
import time


from hermes.control import PIN_ROOT
from launchutil import ROOT

BUDGET_S = 2.0


class Load:
    """Client threads hammering 127.0.0.1:port; results tagged with start time."""

    def __init__(self, port, threads=4):
        self.port = port
        self.results = []           # (start time, ok, what)
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def _run(self):
        while not self.stop.is_set():
            t = time.monotonic()
            what = None
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=BUDGET_S) as c:
                    c.settimeout(BUDGET_S)
                    c.sendall(b"GET / HTTP/1.0\r\n\r\n")
                    data = b""
                    while True:
                        chunk = c.recv(4096)
                        if not chunk:
                            break
                        data += chunk
                    if not data.startswith(b"HTTP/1.1 200"):
                        what = "bad reply %r" % data[:30]
            except OSError as e:
                what = type(e).__name__
            if what is None and time.monotonic() - t > BUDGET_S:
                what = "slow"
            self.results.append((t, what is None, what))

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join()

    def since(self, t0):
        return [r for r in self.results if r[0] >= t0]


def failures(results):
    return [r[2] for r in results if not r[1]]


def _steady(seconds):
    """Keep load going for a while; the clients are what is measured, not this wait."""
    time.sleep(seconds)


def test_crash_of_a_stopped_worker_loses_nothing(launcher):
    """SIGSTOP a worker (connections pile up on its slot), then SIGKILL it: the
    replacement inherits the socket with its queue; no request made since fails."""
    lch = launcher(workers=4)
    victim = lch.worker_pids()[2]
    with Load(lch.port) as load:
        _steady(0.5)
        t0 = time.monotonic()
        os.kill(victim, signal.SIGSTOP)
        _steady(0.5)
        os.kill(victim, signal.SIGKILL)
        lch.wait_until(lambda: lch.worker_pids()[2] not in (None, victim), what="replacement")
        _steady(1.5)
    after = load.since(t0)
    assert len(after) > 50 and not failures(after), failures(after)
    assert lch.status()["workers"][2]["restarts"] == 1


def test_same_crash_with_worker_owned_sockets_resets(tmp_path):
    """The peer: plain SO_REUSEPORT workers owning their listeners.  A killed
    worker's queued connections are reset (what the launcher-held sockets avoid)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=ROOT)
    procs = [subprocess.Popen([sys.executable, "-m", "hermes.demo", "--listen",
                               "127.0.0.1:%d" % port], cwd=ROOT, env=env) for _ in range(4)]
    try:
        deadline = time.monotonic() + 10
        while True:     # wait until all four have bound (their listeners exist)
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                out = subprocess.run(["ss", "-Hltn", "sport = :%d" % port],
                                     capture_output=True, text=True).stdout
                if out.count("LISTEN") == 4:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "demo workers did not start"
            time.sleep(0.02)
        with Load(port) as load:
            _steady(0.5)
            t0 = time.monotonic()
            os.kill(procs[2].pid, signal.SIGSTOP)
            _steady(0.5)
            os.kill(procs[2].pid, signal.SIGKILL)
            _steady(1.0)
        assert failures(load.since(t0)), "expected resets of the killed worker's queue"
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_reload_under_load_loses_nothing(launcher):
    lch = launcher(workers=3)
    old = set(lch.worker_pids())
    with Load(lch.port) as load:
        _steady(0.5)
        lch.proc.send_signal(signal.SIGHUP)
        lch.wait_until(lambda: not old & set(lch.worker_pids()) and all(lch.worker_pids()),
                       what="every worker replaced")
        _steady(1.0)
    assert len(load.results) > 50 and not failures(load.results), failures(load.results)
    # New connections go only to new workers: the old ones have left.
    assert not old & {lch.whoami()["pid"] for _ in range(30)}


def test_scale_down_and_up_under_load_loses_nothing(launcher):
    lch = launcher(workers=4)
    with Load(lch.port) as load:
        _steady(0.5)
        lch.proc.send_signal(signal.SIGTTOU)
        lch.wait_until(lambda: len(lch.worker_pids()) == 3, what="three workers")
        _steady(1.0)
        lch.proc.send_signal(signal.SIGTTIN)
        lch.ready(4)
        _steady(1.0)
    assert len(load.results) > 50 and not failures(load.results), failures(load.results)
    assert 3 in {lch.whoami()["worker"] for _ in range(100)}   # the new slot receives


def test_launcher_upgrade_in_place_under_load(launcher):
    """USR2 re-execs the launcher (same pid): sockets, pins and workers carry over."""
    lch = launcher(workers=3)
    pids = lch.worker_pids()
    with Load(lch.port) as load:
        _steady(0.5)
        lch.proc.send_signal(signal.SIGUSR2)
        lch.wait_until(lambda: lch.status()["upgrades"] == 1, what="the re-exec'd launcher")
        _steady(1.0)
        lch.proc.send_signal(signal.SIGHUP)       # the new image supervises as the old did
        lch.wait_until(lambda: not set(pids) & set(lch.worker_pids()), what="a reload")
        lch.ready()
        _steady(0.5)
    assert len(load.results) > 50 and not failures(load.results), failures(load.results)
    assert lch.status()["pid"] == lch.proc.pid
    assert lch.stop() == 0
    assert not os.path.exists(PIN_ROOT + "/" + lch.name)


def test_scale_down_without_migrate_loses_nothing(launcher):
    """Before Linux 5.14 there is no sk_reuseport/migrate: the removed listener
    stays open until its worker has drained its queue."""
    lch = launcher("--no-migrate", workers=3)
    with Load(lch.port) as load:
        _steady(0.5)
        lch.proc.send_signal(signal.SIGTTOU)
        lch.wait_until(lambda: len(lch.worker_pids()) == 2, what="two workers")
        _steady(1.5)
    assert len(load.results) > 50 and not failures(load.results), failures(load.results)
