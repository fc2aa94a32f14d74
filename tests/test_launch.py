"""hermes-launch end to end: real launcher, real workers, real clients on loopback."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from hermes.control import PIN_ROOT

from launchutil import ROOT


def test_serves_from_every_worker(launcher):
    lch = launcher(workers=4)
    seen = {}
    for _ in range(200):
        me = lch.whoami()
        seen[me["worker"]] = me["pid"]
    assert sorted(seen) == [0, 1, 2, 3]      # P(missing one) ~ 4 * 0.75**200
    st = json.loads(lch.ctl("status", "--json").stdout)
    assert {w["id"]: w["pid"] for w in st["workers"]} == seen
    assert st["dispatch"] == "hermes"
    assert sum(w["dispatched"] for w in st["workers"]) == st["selected"]
    kernel_hash = sum(st["fallbacks"][r] for r in ("no_state", "few", "hung", "no_socket"))
    assert st["selected"] + kernel_hash >= 200


def _load(port, seconds, after, results, path="/"):
    """Sequential new-connection requests with a 1 s budget each."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t = time.monotonic()
        ok = False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as c:
                c.settimeout(1)
                c.sendall(b"GET %s HTTP/1.0\r\n\r\n" % path.encode())
                ok = c.recv(64).startswith(b"HTTP/1.")
        except OSError:
            pass
        if after[0] is not None and t > after[0]:
            results.append(ok and time.monotonic() - t < 1)


def _stop_one_under_load(lch, hermes):
    """SIGSTOP worker 1 under load.  Counted: requests started once hermes reports
    the worker hung (the stuck mask is in place by then), or, for a peer with no
    such report, 0.3 s after the stop.  -> (results, seconds to detection)."""
    victim = lch.worker_pids()[1]
    after, results = [None], []
    threads = [threading.Thread(target=_load, args=(lch.port, 3.5, after, results))
               for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.5)            # load before the stop, for realism only: nothing waits on it
    os.kill(victim, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        if hermes:
            lch.wait_until(lambda: lch.status()["workers"][1]["state"] == "hung",
                           what="the stopped worker reported hung")
            after[0] = time.monotonic()
        else:
            after[0] = stopped + 0.3
        for t in threads:
            t.join()
    finally:
        os.kill(victim, signal.SIGCONT)
    return results, after[0] - stopped


def test_stopped_worker_gets_no_new_requests(launcher):
    """SIGSTOP one worker of 4: once past the hang threshold hermes takes it out
    and fails no new request; reuseport keeps sending it 1/4 of them."""
    hermes, detected = _stop_one_under_load(launcher(workers=4, dispatch="hermes"), True)
    reuse, _ = _stop_one_under_load(launcher(workers=4, dispatch="reuseport"), False)
    assert detected < 2.5                  # threshold 0.2 s + a 50 ms watchdog turn, 10x
    assert len(hermes) > 100 and all(hermes), hermes.count(False)
    assert reuse.count(False) >= 3, (reuse.count(False), len(reuse))


def test_blocked_worker_is_dispatched_less(launcher):
    lch = launcher("--hang-threshold", "100", workers=4)
    import http.client
    blocker = http.client.HTTPConnection("127.0.0.1", lch.port, timeout=10)
    blocker.request("GET", "/whoami")
    victim = json.loads(blocker.getresponse().read())["worker"]
    stop = threading.Event()

    def block():
        while not stop.is_set():
            blocker.request("GET", "/work?block_ms=300")
            blocker.getresponse().read()
    t = threading.Thread(target=block)
    before = {w["id"]: w["dispatched"] for w in lch.status()["workers"]}
    t.start()
    try:
        for _ in range(300):
            assert lch.get("/")[0] == 200
    finally:
        stop.set()
        t.join()
        blocker.close()
    after = {w["id"]: w["dispatched"] - before[w["id"]] for w in lch.status()["workers"]}
    others = [after[i] for i in after if i != victim]
    assert after[victim] * 3 < min(others), after


def test_term_leaves_nothing(launcher):
    lch = launcher(workers=2)
    pids = lch.worker_pids()
    pin = PIN_ROOT + "/" + lch.name
    assert os.path.isdir(pin)
    assert lch.stop() == 0
    assert not os.path.exists(pin)
    assert not os.path.exists(os.path.join(lch.env["HERMES_RUN_DIR"], lch.name + ".sock"))
    for pid in pids:
        assert not os.path.exists("/proc/%d" % pid) or \
            open("/proc/%d/stat" % pid).read().split()[2] == "Z"


def test_crashed_worker_is_replaced(launcher):
    lch = launcher(workers=2)
    old = lch.worker_pids()
    os.kill(old[0], signal.SIGKILL)
    lch.wait_until(lambda: lch.worker_pids()[0] not in (None, old[0]), what="a replacement")
    st = lch.ready()
    st = lch.status()
    assert st["workers"][0]["restarts"] == 1 and st["workers"][1]["pid"] == old[1]
    assert {lch.whoami()["worker"] for _ in range(60)} == {0, 1}


def test_reload_and_resize(launcher):
    lch = launcher(workers=2)
    old = set(lch.worker_pids())
    lch.proc.send_signal(signal.SIGHUP)
    lch.wait_until(lambda: not old & set(lch.worker_pids()) and all(lch.worker_pids()),
                   what="every worker replaced")
    lch.ready()
    lch.proc.send_signal(signal.SIGTTIN)
    lch.ready(3)
    assert {lch.whoami()["worker"] for _ in range(120)} == {0, 1, 2}
    lch.proc.send_signal(signal.SIGTTOU)
    lch.wait_until(lambda: len(lch.worker_pids()) == 2, what="back to two")
    assert {lch.whoami()["worker"] for _ in range(60)} == {0, 1}


def test_crash_loop_ends_in_an_error(bpf, tmp_path):
    env = dict(os.environ, HERMES_RUN_DIR=str(tmp_path), PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, "-m", "hermes.launch", "--listen", "127.0.0.1:0",
                        "--workers", "1", "--name", "crashloop-%d" % os.getpid(), "--", "false"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "failed 5 times in a row" in r.stderr.splitlines()[-1]


def _bad(tmp_path, *args):
    env = dict(os.environ, HERMES_RUN_DIR=str(tmp_path), PYTHONPATH=ROOT)
    name = "bad-%d" % os.getpid()
    r = subprocess.run([sys.executable, "-m", "hermes.launch", "--name", name] + list(args),
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 2, r
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert not os.path.exists(PIN_ROOT + "/" + name)
    assert not os.path.exists(os.path.join(str(tmp_path), name + ".sock"))
    return lines[0]


def test_user_errors_are_one_line(bpf, tmp_path):
    assert "unrecognized arguments" in _bad(tmp_path, "--listen", ":0", "--bogus")
    assert "bad port" in _bad(tmp_path, "--listen", "127.0.0.1:http99")
    assert "--listen is required" in _bad(tmp_path)
    assert "command not found" in _bad(tmp_path, "--listen", ":0", "--", "no-such-cmd-xyz")
    assert "no such user" in _bad(tmp_path, "--listen", ":0", "--user", "no-such-user-xyz")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        for mode in ("hermes", "reuseport", "exclusive"):
            assert "address already in use" in _bad(
                tmp_path, "--listen", "127.0.0.1:%d" % port, "--dispatch", mode)


@pytest.mark.parametrize("mode", ["reuseport", "exclusive"])
def test_peer_modes_serve(launcher, mode):
    lch = launcher(workers=3, dispatch=mode)
    assert {lch.whoami()["worker"] for _ in range(150)} <= {0, 1, 2}
    assert lch.get("/")[0] == 200
    assert all(w["state"] == "running" for w in lch.status()["workers"])


def _as_nobody():
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)


def test_without_bpf_privilege_says_what_is_missing(bpf, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    os.chmod(tmp_path, 0o755)
    os.chmod(run, 0o777)
    env = dict(os.environ, HERMES_RUN_DIR=str(run), PYTHONPATH=ROOT)
    r = subprocess.run(["/usr/bin/python3", "-m", "hermes.launch", "--listen", "127.0.0.1:0",
                        "--workers", "1", "--name", "noperm-%d" % os.getpid()],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
                       preexec_fn=_as_nobody)
    assert r.returncode == 2
    line, = r.stderr.strip().splitlines()
    assert "CAP_BPF" in line and "--dispatch reuseport" in line, line


def test_workers_run_as_the_given_user(launcher):
    lch = launcher("--user", "nobody", workers=2,
                   command=["/usr/bin/python3", "-m", "hermes.demo"])
    for pid in lch.worker_pids():
        uids = [l for l in open("/proc/%d/status" % pid) if l.startswith("Uid:")][0].split()
        assert uids[1:] == ["65534"] * 4
        caps = [l for l in open("/proc/%d/status" % pid) if l.startswith("CapEff:")][0]
        assert int(caps.split()[1], 16) == 0
    assert lch.get("/")[0] == 200


def test_kill_timeout_replaces_a_stuck_worker(launcher):
    lch = launcher("--kill-timeout", "0.5", workers=2)
    import http.client
    c = http.client.HTTPConnection("127.0.0.1", lch.port, timeout=30)
    c.request("GET", "/whoami")
    victim = json.loads(c.getresponse().read())
    c.request("GET", "/work?block_ms=20000")
    with pytest.raises((http.client.HTTPException, OSError)):
        c.getresponse().read()                  # killed mid-request: no answer
    c.close()
    lch.wait_until(lambda: lch.status()["workers"][victim["worker"]]["restarts"] == 1,
                   what="the replacement")
    lch.ready()
    assert lch.status()["workers"][victim["worker"]]["pid"] != victim["pid"]


def test_private_files_and_who_may_read_them(launcher):
    lch = launcher(workers=1)
    pin = PIN_ROOT + "/" + lch.name
    assert os.stat(pin).st_mode & 0o777 == 0o700
    assert os.stat(os.path.join(pin, "listen0", "maps", "hermes_wst")).st_mode & 0o777 == 0o600
    sock = os.path.join(lch.env["HERMES_RUN_DIR"], lch.name + ".sock")
    assert os.stat(sock).st_mode & 0o777 == 0o600
    os.chmod(lch.env["HERMES_RUN_DIR"], 0o755)           # let nobody reach the socket itself
    r = subprocess.run(["/usr/bin/python3", "-m", "hermes.ctl", "--name", lch.name, "status"],
                       cwd=ROOT, env=lch.env, capture_output=True, text=True, timeout=30,
                       preexec_fn=_as_nobody)
    assert r.returncode == 2
    line, = r.stderr.strip().splitlines()
    assert "permission denied" in line, line
