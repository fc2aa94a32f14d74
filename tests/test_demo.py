"""The demo worker, run as the launcher runs it: a subprocess whose listening
socket is fd 3 with LISTEN_FDS=1 and LISTEN_PID=its own pid."""

import http.client
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time

import pytest

from hermes import demo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 10

# What a launcher does between fork and exec: socket at fd 3, LISTEN_PID = own pid.
WRAPPER = ("import os, sys; fd = int(sys.argv[1]); os.dup2(fd, 3); fd != 3 and os.close(fd); "
           "os.environ['LISTEN_PID'] = sys.argv[2] or str(os.getpid()); "
           "os.execv(sys.executable, [sys.executable, '-m', 'hermes.demo'] + sys.argv[3:])")


def _clean_env(extra):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HERMES_", "LISTEN_"))}
    env.update(PYTHONPATH=ROOT, LISTEN_FDS="1")
    env.update(extra)
    return env


class Demo:
    def __init__(self, proc, lsock):
        self.proc, self.lsock = proc, lsock
        self.port = lsock.getsockname()[1]

    @property
    def pid(self):
        return self.proc.pid

    def connect(self):
        return socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT)

    def http(self):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT)

    def stop(self, sig=signal.SIGTERM):
        self.proc.send_signal(sig)
        return self.proc.wait(TIMEOUT)


class Spawner:
    """Starts demo workers; close() kills and reaps every one by pid."""

    def __init__(self):
        self.started = []

    def __call__(self, env=None, listen_pid="", args=()):
        lsock = socket.create_server(("127.0.0.1", 0))
        try:
            proc = subprocess.Popen(
                [sys.executable, "-c", WRAPPER, str(lsock.fileno()), listen_pid] + list(args),
                pass_fds=(lsock.fileno(),), env=_clean_env(env or {}), cwd=ROOT,
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        except BaseException:
            lsock.close()
            raise
        d = Demo(proc, lsock)
        self.started.append(d)
        return d

    def close(self):
        for d in self.started:
            if d.proc.poll() is None:
                os.kill(d.proc.pid, signal.SIGKILL)
            d.proc.wait()
            d.proc.stderr.close()
            d.lsock.close()


@pytest.fixture
def spawn():
    """spawn(env={}, listen_pid="") -> Demo (LISTEN_PID "" = the worker's own pid)."""
    sp = Spawner()
    try:
        yield sp
    finally:
        sp.close()


@pytest.fixture(scope="module")
def shared_demo():
    """One worker for the many small request-parsing cases."""
    sp = Spawner()
    try:
        yield sp()
    finally:
        sp.close()


def closed_by_peer(s):
    try:
        return s.recv(1) == b""
    except ConnectionResetError:      # the kernel's answer to unread data at close
        return True


class Reader:
    """Responses read off a raw socket, one at a time (for pipelining)."""

    def __init__(self, sock):
        self.f = sock.makefile("rb")

    def response(self):
        line = self.f.readline()
        assert line.startswith(b"HTTP/1.1 "), line
        headers = {}
        while True:
            h = self.f.readline()
            if h in (b"\r\n", b""):
                break
            k, _, v = h.decode("latin-1").partition(":")
            headers[k.strip().lower()] = v.strip()
        body = self.f.read(int(headers["content-length"]))
        return int(line.split()[1]), headers, body

    def eof(self):
        return self.f.read(1) == b""


def get(conn, path, headers=None, method="GET"):
    conn.request(method, path, headers=headers or {})
    r = conn.getresponse()
    return r.status, r, r.read()


# --- the endpoints -----------------------------------------------------------------------
def test_endpoints_on_one_keepalive_connection(spawn):
    d = spawn({"HERMES_WORKER_ID": "7", "HERMES_SLOT": "3"})
    c = d.http()
    try:
        status, r, body = get(c, "/")
        assert status == 200 and b"worker 7" in body and not r.will_close
        sock = c.sock
        status, r, body = get(c, "/whoami")
        assert status == 200 and r.getheader("Content-Type") == "application/json"
        assert json.loads(body) == {"worker": 7, "pid": d.pid}
        status, r, body = get(c, "/nope")
        assert (status, body) == (404, b"not found\n")
        status, r, body = get(c, "/", method="POST")
        assert status == 405 and r.getheader("Allow") == "GET, HEAD"
        status, r, body = get(c, "/work?bytes=100000", method="HEAD")
        assert status == 200 and r.getheader("Content-Length") == "100000" and body == b""
        assert c.sock is sock, "the connection was not kept alive"
    finally:
        c.close()


def test_worker_id_falls_back_to_slot_then_minus_one(spawn):
    for env, want in (({"HERMES_SLOT": "3"}, 3), ({}, -1)):
        d = spawn(env)
        c = d.http()
        try:
            assert json.loads(get(c, "/whoami")[2])["worker"] == want
        finally:
            c.close()


def _cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_work_burns_blocks_and_answers_k_bytes(spawn):
    d = spawn()
    c = d.http()
    try:
        assert get(c, "/work")[2] == b""                        # all parameters optional
        cpu0, t0 = _cpu_seconds(d.pid), time.monotonic()
        status, r, body = get(c, "/work?cpu_ms=150&block_ms=100&bytes=3000000")
        wall, cpu = time.monotonic() - t0, _cpu_seconds(d.pid) - cpu0
        assert status == 200 and body == b"x" * 3000000
        assert r.getheader("Content-Type") == "application/octet-stream"
        assert wall >= 0.25                 # the CPU burn and the block come one after the other
        assert cpu >= 0.1                   # the burn was CPU time, not a sleep
        assert cpu < wall - 0.05            # and the block was not
    finally:
        c.close()


@pytest.mark.parametrize("query", [
    "cpu_ms=-1", "cpu_ms=abc", "cpu_ms=", "block_ms=60001", "cpu_ms=60001",
    "bytes=67108865", "bytes=1&bytes=2", "sleep=1", "cpu_ms=1.5", "cpu_ms=%C2%B2",
])
def test_work_rejects_bad_parameters(shared_demo, query):
    c = shared_demo.http()
    try:
        status, r, body = get(c, "/work?" + query)
        assert status == 400 and (b"/work" in body or b"limit" in body)
        assert not r.will_close             # a bad parameter is not a broken connection
    finally:
        c.close()


def test_work_limits_are_inclusive(spawn):
    d = spawn()
    c = d.http()
    try:
        status, r, _ = get(c, "/work?bytes=%d" % (64 << 20), method="HEAD")
        assert status == 200 and r.getheader("Content-Length") == str(64 << 20)
    finally:
        c.close()


# --- HTTP framing ------------------------------------------------------------------------
def test_pipelined_requests_answered_in_order(spawn):
    d = spawn({"HERMES_WORKER_ID": "1"})
    s = d.connect()
    try:
        s.sendall(b"GET /whoami HTTP/1.1\r\nHost: x\r\n\r\n"
                  b"GET /work?bytes=70000 HTTP/1.1\r\nHost: x\r\n\r\n"
                  b"POST /nope HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"
                  b"GET / HTTP/1.1\r\n\r\n")
        rd = Reader(s)
        st, _, body = rd.response()
        assert st == 200 and json.loads(body)["worker"] == 1
        st, _, body = rd.response()
        assert st == 200 and len(body) == 70000
        assert rd.response()[0] == 404          # its body was skipped, not parsed as a request
        st, _, body = rd.response()
        assert st == 200 and body.startswith(b"Hermes demo worker 1")
    finally:
        s.close()


def test_partial_requests_are_reassembled(spawn):
    d = spawn()
    s = d.connect()
    try:
        rd = Reader(s)
        req = b"GET /work?bytes=3 HTTP/1.1\r\nHost: x\r\n\r\n" * 2
        for i in range(0, len(req), 7):
            s.sendall(req[i:i + 7])
        assert rd.response()[2] == b"xxx" and rd.response()[2] == b"xxx"
        s.sendall(b"GET / HTTP/1.1\r\nHo")
        s.sendall(b"st: x\r\n\r\n")
        assert rd.response()[0] == 200
    finally:
        s.close()


@pytest.mark.parametrize("request_bytes, keep", [
    (b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", False),
    (b"GET / HTTP/1.1\r\nConnection: Keep-Alive, Close\r\n\r\n", False),
    (b"GET / HTTP/1.0\r\n\r\n", False),
    (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", True),
    (b"GET / HTTP/1.1\r\n\r\n", True),
])
def test_connection_close_and_http10(spawn, request_bytes, keep):
    d = spawn()
    s = d.connect()
    try:
        rd = Reader(s)
        s.sendall(request_bytes + b"GET /whoami HTTP/1.1\r\n\r\n")
        st, h, _ = rd.response()
        assert st == 200
        if keep:
            assert h.get("connection") != "close"
            assert rd.response()[0] == 200      # the pipelined second request is answered
        else:
            assert h["connection"] == "close"
            assert rd.eof()                     # and the second one is not
    finally:
        s.close()


@pytest.mark.parametrize("request_bytes, status", [
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET /\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nNo colon here\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
    (b"GET http://x/ HTTP/1.1\r\n\r\n", 400),
    (b"GET / HTTP/2.0\r\n\r\n", 505),
    (b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 501),
    (b"GET / HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n", 413),
    (b"GET / HTTP/1.1\r\nX: " + b"a" * demo.MAX_HEAD, 431),
])
def test_malformed_requests_get_4xx_and_close(shared_demo, request_bytes, status):
    s = shared_demo.connect()
    try:
        rd = Reader(s)
        s.sendall(request_bytes)
        st, h, _ = rd.response()
        assert (st, h["connection"]) == (status, "close")
        assert rd.eof()
    finally:
        s.close()


def test_peer_half_close_still_gets_answers(spawn):
    d = spawn()
    s = d.connect()
    try:
        s.sendall(b"GET / HTTP/1.1\r\n\r\nGET /whoami HTTP/1.1\r\n\r\nGET / HTT")
        s.shutdown(socket.SHUT_WR)
        rd = Reader(s)
        assert rd.response()[0] == 200 and rd.response()[0] == 200
        assert rd.eof()                         # the unfinished third is dropped
    finally:
        s.close()


def test_large_pipelined_responses_respect_backpressure(spawn):
    d = spawn()
    s = d.connect()
    try:
        n, size = 6, 4 << 20
        s.sendall(b"GET /work?bytes=%d HTTP/1.1\r\n\r\n" % size * n)
        rd = Reader(s)
        for _ in range(n):
            st, _, body = rd.response()
            assert st == 200 and len(body) == size
    finally:
        s.close()


# --- sockets and signals ------------------------------------------------------------------
def test_listen_pid_for_another_process_is_ignored(spawn):
    d = spawn(listen_pid="1")
    assert d.proc.wait(TIMEOUT) == 2
    assert b"no listening sockets" in d.proc.stderr.read()


@pytest.mark.parametrize("kind", ["pipe", "socketpair"])
def test_listen_fds_must_be_listening_sockets(kind):
    a, b = os.pipe() if kind == "pipe" else (s.detach() for s in socket.socketpair())
    try:
        r = subprocess.run([sys.executable, "-c", WRAPPER, str(a), ""], pass_fds=(a,),
                           env=_clean_env({}), cwd=ROOT, capture_output=True, text=True,
                           timeout=TIMEOUT)
    finally:
        os.close(a)
        os.close(b)
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert ("not a socket" if kind == "pipe" else "not a listening socket") in r.stderr
    assert demo.listen_fds({"LISTEN_PID": "x", "LISTEN_FDS": "1"}) == []
    assert demo.listen_fds({"LISTEN_FDS": "1"}) == []


def _epoll_registrations(pid):
    """{fd: events} registered in the process's epoll instance(s)."""
    regs = {}
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            if os.readlink("/proc/%d/fd/%s" % (pid, fd)) != "anon_inode:[eventpoll]":
                continue
            with open("/proc/%d/fdinfo/%s" % (pid, fd)) as f:
                for line in f:
                    if line.startswith("tfd:"):
                        parts = line.split()
                        regs[int(parts[1])] = int(parts[3], 16)
        except OSError:
            continue
    return regs


@pytest.mark.parametrize("mode", ["exclusive", "hermes"])
def test_exclusive_dispatch_polls_listeners_with_epollexclusive(spawn, mode):
    d = spawn({"HERMES_DISPATCH": mode})
    c = d.http()
    try:
        assert get(c, "/")[0] == 200            # serving: the listener is registered
        events = _epoll_registrations(d.pid)[3]
        assert bool(events & select.EPOLLEXCLUSIVE) == (mode == "exclusive")
    finally:
        c.close()


def _whoami(d):
    c = d.http()
    try:
        return json.loads(get(c, "/whoami")[2])["worker"]
    finally:
        c.close()


def test_two_exclusive_workers_share_one_listener(spawn):
    d1 = spawn({"HERMES_DISPATCH": "exclusive", "HERMES_WORKER_ID": "1"})
    assert _whoami(d1) == 1                   # alone on the socket, and up
    lsock = d1.lsock
    proc2 = subprocess.Popen(
        [sys.executable, "-c", WRAPPER, str(lsock.fileno()), ""],
        pass_fds=(lsock.fileno(),), stderr=subprocess.DEVNULL,
        env=_clean_env({"HERMES_DISPATCH": "exclusive", "HERMES_WORKER_ID": "2"}), cwd=ROOT)
    try:
        assert _whoami(d1) in (1, 2)
        # Both poll the one socket: stopping one leaves the other serving it.
        assert d1.stop() == 0
        assert _whoami(d1) == 2
    finally:
        if proc2.poll() is None:
            os.kill(proc2.pid, signal.SIGKILL)
        proc2.wait()


def test_term_finishes_requests_in_flight_then_exits_0(spawn):
    d = spawn()
    idle, busy, partial = d.connect(), d.connect(), d.connect()
    try:
        readers = {s: Reader(s) for s in (idle, busy, partial)}
        for s in (idle, busy, partial):       # all three accepted and idle
            s.sendall(b"GET /whoami HTTP/1.1\r\n\r\n")
            assert readers[s].response()[0] == 200
        busy.sendall(b"GET /work?block_ms=300&bytes=5 HTTP/1.1\r\n\r\n")
        partial.sendall(b"GET / HTTP/1.1\r\nHo")
        d.proc.send_signal(signal.SIGTERM)
        assert readers[idle].eof()            # drain has begun: idle connections go
        late = d.connect()                    # queued on the listener, never accepted
        try:
            st, _, body = readers[busy].response()
            assert (st, body) == (200, b"xxxxx") and readers[busy].eof()
            partial.sendall(b"st: x\r\n\r\n")
            st, h, _ = readers[partial].response()
            assert (st, h["connection"]) == (200, "close") and readers[partial].eof()
            assert d.proc.wait(TIMEOUT) == 0
            # The listening socket is the launcher's: still listening, `late` still queued.
            assert d.lsock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
            d.lsock.settimeout(TIMEOUT)
            d.lsock.accept()[0].close()
        finally:
            late.close()
    finally:
        for s in (idle, busy, partial):
            s.close()


def test_graceful_timeout_bounds_the_stop(spawn):
    d = spawn({"HERMES_GRACEFUL_TIMEOUT": "0.5"})
    s = d.connect()
    try:
        s.sendall(b"GET / HTTP/1.1\r\n\r\n")
        Reader(s).response()
        s.sendall(b"GET / HTTP/1.1\r\n")      # never finished
        t0 = time.monotonic()
        assert d.stop() == 0
        assert time.monotonic() - t0 >= 0.4
        assert b"graceful timeout" in d.proc.stderr.read()
        assert s.recv(1) == b""
    finally:
        s.close()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGQUIT])
def test_int_and_quit_exit_at_once(spawn, sig):
    d = spawn()
    s = d.connect()
    try:
        s.sendall(b"GET / HTTP/1.1\r\n\r\n")
        Reader(s).response()                  # serving, signal handlers in place
        s.sendall(b"GET /work?block_ms=60000 HTTP/1.1\r\n\r\n")
        t0 = time.monotonic()
        assert d.stop(sig) == -sig        # killed by the kernel, no handler race
        assert time.monotonic() - t0 < 5      # not after the 60 s block
        assert closed_by_peer(s)
    finally:
        s.close()


def test_standalone_listen_and_bad_environment(tmp_path):
    env = _clean_env({"HERMES_WORKER_ID": "zero"})
    env.pop("LISTEN_FDS")
    r = subprocess.run([sys.executable, "-m", "hermes.demo", "--listen", "127.0.0.1:0"],
                       env=env, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "HERMES_WORKER_ID" in r.stderr
    env.pop("HERMES_WORKER_ID")
    r = subprocess.run([sys.executable, "-m", "hermes.demo", "--listen", "nonsense"],
                       env=env, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 2 and "expected HOST:PORT" in r.stderr


# --- under Hermes: the SDK hooks ----------------------------------------------------------
def test_publishes_its_state_in_the_hermes_pool(bpf, hermes_obj):
    from hermes.dispatcher import Dispatcher
    with Dispatcher(1, obj=hermes_obj) as disp:
        port = disp.listen()
        env, fds = disp.worker_env(0)
        lfd = disp.sockets[0].fileno()
        env = _clean_env(env)
        proc = subprocess.Popen([sys.executable, "-c", WRAPPER, str(lfd), ""],
                                pass_fds=tuple(fds) + (lfd,), env=env, cwd=ROOT,
                                stderr=subprocess.PIPE)
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
        try:
            assert json.loads(get(c, "/whoami")[2]) == {"worker": 0, "pid": proc.pid}
            slot = disp.state.slot(0)
            assert slot["pid"] == proc.pid
            assert slot["conns"] == 1           # counted at accept, before the answer
            assert slot["layout"] == disp.layout.value
            c.close()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(TIMEOUT) == 0, proc.stderr.read()
            slot = disp.state.slot(0)
            assert slot["layout"] == 0          # detached on TERM: the slot is handed over
            assert slot["conns"] == 0
        finally:
            c.close()
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            proc.stderr.close()
