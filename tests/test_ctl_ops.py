"""hermesctl status/top/metrics/drain/resume/set against a fake launcher: a thread
answering canned JSON on $HERMES_RUN_DIR/NAME.sock, recording each request."""

import copy
import errno
import fcntl
import json
import math
import os
import pty
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
import urllib.error
import urllib.request

import pytest

from hermes.ctl import main, top

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 10

STATUS = {
    "name": "default", "pid": 4000, "version": "0.1.0", "dispatch": "hermes",
    "listen": ["127.0.0.1:8080", "[::1]:8080"], "uptime_s": 3725.5,
    "policy": {"hang_threshold_ms": 200.0, "theta": 0.5, "stale_limit_ms": 1000.0,
               "group_mode": "hash"},
    "workers": [
        {"id": 0, "pid": 4101, "state": "idle", "eligible": True, "loop_age_ms": 12.5,
         "busy_ms": 0.0, "pending": 0, "conns": 3, "dispatched": 1500, "restarts": 0},
        {"id": 1, "pid": 4102, "state": "hung", "eligible": False, "loop_age_ms": 2500.0,
         "busy_ms": 2490.25, "pending": 7, "conns": 9, "dispatched": 700, "restarts": 2},
        {"id": 2, "pid": None, "state": "restarting", "eligible": None, "loop_age_ms": None,
         "busy_ms": None, "pending": None, "conns": None, "dispatched": 33, "restarts": 5},
    ],
    "fallbacks": {"stale": 2, "hung": 5, 'odd "reason"\\x': 1},
    "selected": 2233,
}

REUSEPORT = {
    "name": "rp", "pid": 5000, "version": "0.1.0", "dispatch": "reuseport",
    "listen": [":8080"], "uptime_s": 1.0, "policy": None, "fallbacks": {}, "selected": None,
    "workers": [{"id": 0, "pid": 5101, "state": "running", "eligible": None,
                 "loop_age_ms": None, "busy_ms": None, "pending": None, "conns": None,
                 "dispatched": None, "restarts": 0}],
}


class FakeLauncher:
    """Answers one JSON line per connection, like the launcher's control socket."""

    def __init__(self, run_dir, name="default", status=None):
        self.path = os.path.join(run_dir, name + ".sock")
        self.status = copy.deepcopy(STATUS if status is None else status)
        self.requests = []
        self.policy = dict(self.status["policy"] or {})
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(16)
        self._stop_r, self._stop_w = os.pipe()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def answer(self, req):
        cmd = req.get("cmd")
        if cmd == "status":
            return self.status
        if cmd in ("drain", "resume"):
            if req.get("id", -1) >= len(self.status["workers"]):
                return {"error": "no worker %r (have 0..%d)"
                        % (req["id"], len(self.status["workers"]) - 1)}
            return {"ok": True}
        if cmd == "set":
            self.policy.update(req["policy"])
            return {"ok": True, "policy": self.policy}
        return {"error": "unknown command %r" % cmd}

    def _serve(self):
        while True:
            ready, _, _ = select.select([self.sock, self._stop_r], [], [])
            if self._stop_r in ready:
                return
            conn, _ = self.sock.accept()
            with conn:
                conn.settimeout(TIMEOUT)
                buf = b""
                while not buf.endswith(b"\n"):
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    buf += chunk
                req = json.loads(buf)
                self.requests.append(req)
                conn.sendall(json.dumps(self.answer(req)).encode() + b"\n")

    def close(self):
        if self.thread is None:
            return
        os.write(self._stop_w, b"x")
        self.thread.join(TIMEOUT)
        self.thread = None
        self.sock.close()
        os.unlink(self.path)
        os.close(self._stop_r)
        os.close(self._stop_w)


@pytest.fixture
def run_dir(monkeypatch):
    # AF_UNIX paths are limited to 108 bytes: pytest's tmp_path can be longer.
    d = tempfile.mkdtemp(prefix="hermesctl-")
    monkeypatch.setenv("HERMES_RUN_DIR", d)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def launcher(run_dir):
    """launcher(name="default", status=None) -> FakeLauncher; all closed afterwards."""
    made = []

    def start(name="default", status=None):
        f = FakeLauncher(run_dir, name, status)
        made.append(f)
        return f
    try:
        yield start
    finally:
        for f in made:
            f.close()


def run(capsys, *argv):
    """(exit status, stdout, stderr) of hermesctl ARGV in this process."""
    try:
        rc = main(list(argv))
    except SystemExit as e:         # argparse's own errors
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


# --- status -------------------------------------------------------------------------------
def test_status_table(launcher, capsys):
    fake = launcher()
    rc, out, err = run(capsys, "status")
    assert (rc, err) == (0, "")
    assert fake.requests == [{"cmd": "status"}]
    lines = out.splitlines()
    assert lines[0] == "hermes default: pid 4000, version 0.1.0, dispatch hermes, up 1h02m"
    assert lines[1] == "listen:    127.0.0.1:8080, [::1]:8080"
    assert "hang threshold 200 ms, theta 0.5, stale limit 1.0 s, group mode hash" in lines[2]
    header = next(i for i, line in enumerate(lines) if line.startswith("ID"))
    assert lines[header].split() == ["ID", "PID", "STATE", "ELIGIBLE", "LOOP", "AGE", "BUSY",
                                     "PENDING", "CONNS", "DISPATCHED", "RESTARTS"]
    rows = [line.split() for line in lines[header + 1:header + 4]]
    assert rows[0] == ["0", "4101", "idle", "yes", "12", "ms", "0", "ms", "0", "3", "1500", "0"]
    assert rows[1] == ["1", "4102", "hung", "no", "2.5", "s", "2.5", "s", "7", "9", "700", "2"]
    assert rows[2] == ["2", "-", "restarting", "-", "-", "-", "-", "-", "33", "5"]
    # Right-aligned numbers end in the header's column.
    end = lines[header].index("DISPATCHED") + len("DISPATCHED")
    assert all(lines[header + 1 + i][:end].endswith(n) for i, n in enumerate(("1500", "700", "33")))
    assert lines[-1].startswith("selected:  2233    fallbacks: hung 5, ")
    assert "stale 2" in lines[-1]


def test_status_json_is_the_reply(launcher, capsys):
    launcher()
    rc, out, _ = run(capsys, "status", "--json")
    assert rc == 0 and json.loads(out) == STATUS


def test_status_of_a_reuseport_pool(launcher, capsys):
    launcher("rp", REUSEPORT)
    rc, out, _ = run(capsys, "status", "--name", "rp")
    assert rc == 0
    assert "policy:    -" in out and "selected:  -    fallbacks: none" in out
    assert ["0", "5101", "running", "-", "-", "-", "-", "-", "-", "0"] in \
        [line.split() for line in out.splitlines()]


def test_name_selects_the_launcher(launcher, capsys):
    blue = launcher("blue", dict(STATUS, name="blue"))
    green = launcher("green", dict(STATUS, name="green"))
    assert json.loads(run(capsys, "--name", "blue", "status", "--json")[1])["name"] == "blue"
    assert json.loads(run(capsys, "status", "--json", "--name", "green")[1])["name"] == "green"
    assert len(blue.requests) == len(green.requests) == 1


@pytest.mark.parametrize("argv", [["status"], ["status", "--json"], ["metrics"],
                                  ["drain", "1"], ["resume", "1"], ["set", "theta=1"]])
def test_no_launcher_is_one_line_exit_2(run_dir, capsys, argv):
    rc, out, err = run(capsys, *argv)
    assert rc == 2 and out == ""
    assert err == "hermesctl: no Hermes launcher named 'default' is running (no %s)\n" \
        % os.path.join(run_dir, "default.sock")


def test_stale_socket_and_bad_name(run_dir, capsys):
    s = socket.socket(socket.AF_UNIX)
    s.bind(os.path.join(run_dir, "gone.sock"))
    s.close()                       # the file stays, nobody listens: a crashed launcher
    rc, _, err = run(capsys, "--name", "gone", "status")
    assert rc == 2 and "not running (stale" in err and err.count("\n") == 1
    rc, _, err = run(capsys, "--name", "../etc", "status")
    assert rc == 2 and "bad instance name" in err and err.count("\n") == 1


def test_top_needs_a_terminal(launcher, capsys):
    launcher()
    rc, _, err = run(capsys, "top")
    assert rc == 2 and "needs a terminal" in err


# --- drain, resume, set ------------------------------------------------------------------------
def test_drain_and_resume(launcher, capsys):
    fake = launcher()
    assert run(capsys, "drain", "1") == (0, "worker 1: draining\n", "")
    assert run(capsys, "resume", "1") == (0, "worker 1: resumed\n", "")
    assert fake.requests == [{"cmd": "drain", "id": 1}, {"cmd": "resume", "id": 1}]
    rc, out, err = run(capsys, "drain", "9")          # the launcher refuses
    assert (rc, out, err) == (2, "", "hermesctl: no worker 9 (have 0..2)\n")


@pytest.mark.parametrize("arg", ["x", "-1", "1.5", ""])
def test_drain_bad_id(launcher, capsys, arg):
    fake = launcher()
    rc, out, err = run(capsys, "drain", arg)
    assert rc == 2 and err.count("\n") == 1 and fake.requests == []


def test_set_policy(launcher, capsys):
    fake = launcher()
    rc, out, err = run(capsys, "set", "hang-threshold=250", "theta=0.25",
                       "stale_limit_ms=1500.5", "group_mode=hash")
    assert (rc, err) == (0, "")
    assert fake.requests == [{"cmd": "set", "policy": {
        "hang_threshold_ms": 250, "theta": 0.25, "stale_limit_ms": 1500.5,
        "group_mode": "hash"}}]
    assert out == ("policy: hang threshold 250 ms, theta 0.25, stale limit 1.5 s, "
                   "group mode hash\n")
    run(capsys, "set", "hang_threshold_ms=300", "stale-limit=900")
    assert fake.requests[-1]["policy"] == {"hang_threshold_ms": 300, "stale_limit_ms": 900}


@pytest.mark.parametrize("pairs", [
    ["theta=abc"], ["theta=101"], ["theta=-0.1"], ["theta=nan"], ["hang-threshold=0"],
    ["hang_threshold_ms=inf"], ["stale_limit_ms=-5"], ["nope=1"], ["theta"], ["=1"],
    ["theta=0.1", "theta=0.2"], ["theta=0.1", "hang-threshold=1", "hang_threshold_ms=2"],
    ["group_mode="],
])
def test_set_rejects_bad_pairs_before_asking(launcher, capsys, pairs):
    fake = launcher()
    rc, out, err = run(capsys, "set", *pairs)
    assert rc == 2 and out == "" and err.startswith("hermesctl: set") and err.count("\n") == 1
    assert fake.requests == []


# --- metrics -----------------------------------------------------------------------------------
_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"'
_SAMPLE = re.compile(r"^(%s)(?:\{(.*)\})? (\S+)(?: -?\d+)?$" % _NAME)
_VALUE = re.compile(r"^(NaN|[-+]Inf|[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?)$")
_TYPES = ("counter", "gauge", "histogram", "summary", "untyped")


def _unescape(v):
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), v)


def parse_prometheus(text):
    """{(name, ((label, value), ...)): float}, {name: type}, checking the text format
    strictly: HELP/TYPE at most once per family and before its samples, families
    contiguous, no duplicate series, counters named *_total, a final newline."""
    assert text.endswith("\n"), "the exposition must end with a newline"
    samples, types, helps, done, current = {}, {}, set(), set(), None

    def enter(name):
        nonlocal current
        assert name not in done, "family %s is not contiguous" % name
        if current not in (None, name):
            done.add(current)
        current = name

    for line in text[:-1].split("\n"):
        if line.startswith("#"):
            m = re.match(r"^# (HELP|TYPE) (%s) (.*)$" % _NAME, line)
            if not m:
                assert not line.startswith(("# HELP", "# TYPE")), line
                continue                                # a plain comment
            kind, name, rest = m.groups()
            enter(name)
            if kind == "TYPE":
                assert name not in types and rest in _TYPES, line
                assert not any(n == name for n, _ in samples), "TYPE after samples: " + line
                types[name] = rest
            else:
                assert name not in helps, line
                helps.add(name)
            continue
        assert line, "blank line in the exposition"
        m = _SAMPLE.match(line)
        assert m, "not a sample line: %r" % line
        name, labels, value = m.groups()
        enter(name)
        assert name in types, "sample before its TYPE: " + line
        pairs = ()
        if labels:
            assert re.fullmatch(r"%s(?:,%s)*,?" % (_LABEL, _LABEL), labels), line
            pairs = tuple((k, _unescape(v)) for k, v in re.findall(_LABEL, labels))
        assert len({k for k, _ in pairs}) == len(pairs), "repeated label: " + line
        assert (name, pairs) not in samples, "duplicate series: " + line
        assert _VALUE.match(value), "bad value: " + line
        samples[(name, pairs)] = float(value)
    for name, t in types.items():
        if t == "counter":
            assert name.endswith("_total"), name
    return samples, types


def _get(samples, metric, **labels):
    return samples[(metric, tuple(labels.items()))]


def test_metrics_parse_as_prometheus_text(launcher, capsys):
    launcher()
    rc, out, err = run(capsys, "metrics")
    assert (rc, err) == (0, "")
    s, types = parse_prometheus(out)
    assert _get(s, "hermes_up") == 1
    assert _get(s, "hermes_info", name="default", version="0.1.0", dispatch="hermes") == 1
    assert _get(s, "hermes_workers") == 3
    assert _get(s, "hermes_worker_dispatched_total", worker="0") == 1500
    assert _get(s, "hermes_worker_dispatched_total", worker="2") == 33
    assert _get(s, "hermes_worker_connections", worker="1") == 9
    assert _get(s, "hermes_worker_pending", worker="1") == 7
    assert _get(s, "hermes_worker_loop_age_seconds", worker="1") == 2.5
    assert _get(s, "hermes_worker_restarts_total", worker="2") == 5
    assert _get(s, "hermes_worker_eligible", worker="0") == 1
    assert _get(s, "hermes_worker_eligible", worker="1") == 0
    # Unknown values are absent, not zero.
    assert ("hermes_worker_connections", (("worker", "2"),)) not in s
    for w, state in (("0", "idle"), ("1", "hung"), ("2", "restarting")):
        one_hot = {lab[1][1]: v for (n, lab), v in s.items()
                   if n == "hermes_worker_state" and lab[0] == ("worker", w)}
        assert one_hot == {st: float(st == state)
                           for st in ("idle", "busy", "hung", "draining", "starting", "restarting")}
    assert _get(s, "hermes_fallbacks_total", reason="hung") == 5
    assert _get(s, "hermes_fallbacks_total", reason='odd "reason"\\x') == 1   # escaped
    assert _get(s, "hermes_selected_total") == 2233
    assert _get(s, "hermes_policy_hang_threshold_seconds") == 0.2
    assert _get(s, "hermes_policy_theta") == 0.5
    assert _get(s, "hermes_policy_stale_limit_seconds") == 1.0
    assert _get(s, "hermes_policy_group_mode", mode="hash") == 1
    assert types["hermes_worker_dispatched_total"] == "counter"
    assert types["hermes_worker_connections"] == "gauge"


def test_metrics_of_a_reuseport_pool(launcher, capsys):
    launcher("rp", REUSEPORT)
    rc, out, _ = run(capsys, "--name", "rp", "metrics")
    s, _ = parse_prometheus(out)
    assert rc == 0 and _get(s, "hermes_up") == 1
    assert not any(n.startswith("hermes_policy") for n, _ in s)
    assert ("hermes_selected_total", ()) not in s
    assert _get(s, "hermes_worker_state", worker="0", state="running") == 1
    assert _get(s, "hermes_worker_state", worker="0", state="idle") == 0


def test_metrics_value_format():
    from hermes.ctl.metrics import _value, exposition
    assert [_value(v) for v in (True, 3, 0.25, math.nan, math.inf, -math.inf)] == \
        ["1", "3", "0.25", "NaN", "+Inf", "-Inf"]
    s, _ = parse_prometheus(exposition(None))
    assert s == {("hermes_up", ()): 0}


@pytest.fixture
def ctl_proc():
    """ctl_proc(*argv, **popen) -> Popen of hermesctl; killed and reaped afterwards."""
    procs = []

    def start(*argv, **kw):
        p = subprocess.Popen([sys.executable, "-m", "hermes.ctl"] + list(argv), cwd=ROOT,
                             env=dict(os.environ, PYTHONPATH=ROOT), **kw)
        procs.append(p)
        return p
    try:
        yield start
    finally:
        for p in procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)
            p.wait()
            for f in (p.stdout, p.stderr):
                if f:
                    f.close()


def _fetch(url):
    with urllib.request.urlopen(url, timeout=TIMEOUT) as r:
        return r.status, r.headers["Content-Type"], r.read().decode()


def test_metrics_serve(launcher, ctl_proc):
    fake = launcher()
    p = ctl_proc("metrics", "--serve", "127.0.0.1:0", stderr=subprocess.PIPE, text=True)
    line = p.stderr.readline()
    m = re.search(r"at (http://127\.0\.0\.1:\d+)/metrics", line)
    assert m, line
    base = m.group(1)
    status, ctype, body = _fetch(base + "/metrics")
    assert status == 200 and ctype.startswith("text/plain; version=0.0.4")
    s, _ = parse_prometheus(body)
    assert _get(s, "hermes_up") == 1 and _get(s, "hermes_worker_pending", worker="1") == 7
    with pytest.raises(urllib.error.HTTPError) as e:
        _fetch(base + "/")
    assert e.value.code == 404
    e.value.close()
    fake.close()                        # the launcher goes away: scrapes still answer
    s, _ = parse_prometheus(_fetch(base + "/metrics")[2])
    assert s == {("hermes_up", ()): 0}
    launcher()                          # and it comes back
    s, _ = parse_prometheus(_fetch(base + "/metrics")[2])
    assert _get(s, "hermes_up") == 1
    p.send_signal(signal.SIGTERM)
    assert p.wait(TIMEOUT) == 0


def test_metrics_serve_bad_address(run_dir, capsys):
    rc, _, err = run(capsys, "metrics", "--serve", "nonsense")
    assert rc == 2 and "expected HOST:PORT" in err
    busy = socket.create_server(("127.0.0.1", 0))
    try:
        rc, _, err = run(capsys, "metrics", "--serve", "127.0.0.1:%d" % busy.getsockname()[1])
        assert rc == 2 and err.count("\n") == 1 and "in use" in err
    finally:
        busy.close()


# --- top ---------------------------------------------------------------------------------------
def test_top_rates_and_frames():
    prev = copy.deepcopy(STATUS)
    cur = copy.deepcopy(STATUS)
    cur["workers"][0]["dispatched"] += 300
    cur["workers"][1]["dispatched"] -= 1          # went back: unknown, not negative
    cur["selected"] += 300
    assert top.rates(prev, cur, 2.0) == {0: 150.0, 1: None, 2: 0.0}
    assert top.rates(None, cur, 2.0) == {0: None, 1: None, 2: None}
    lines = top.screen("default", cur, prev, 2.0, width=120)
    texts = [t for t, _ in lines]
    assert len(texts[0]) == 120 and texts[0].startswith("hermes top: default - pid 4000")
    head = next(t for t in texts if t.split()[:1] == ["ID"])
    rate_end = head.index("RATE/s") + len("RATE/s")
    row0 = next(t for t in texts if t.split()[:2] == ["0", "4101"])
    assert row0[:rate_end].endswith("150")
    total = next(t for t in texts if t.startswith("total"))
    assert total.split() == ["total", "7", "12", str(1800 + 699 + 33), "150", "7"]
    assert any("(selected 150/s)" in t for t in texts)
    err = [t for t, _ in top.screen("default", cur, None, 0, error="gone", since_ok=75)]
    assert "no answer: gone" in err and any("last answer 1m15s ago" in t for t in err)


class Pty:
    """hermesctl in a pseudo-terminal: what it drew, keys, resizes."""

    def __init__(self, argv, env, rows=30, cols=120):
        pid, fd = pty.fork()
        if pid == 0:                                    # child: only exec
            try:
                fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
                os.execve(sys.executable, [sys.executable, "-m", "hermes.ctl"] + argv, env)
            finally:
                os._exit(127)
        self.pid, self.fd, self.out, self.status = pid, fd, b"", None

    def expect(self, needle, since):
        """Wait until `needle` appears in the output after offset `since`."""
        deadline = time.monotonic() + TIMEOUT
        while needle not in self.out[since:]:
            left = deadline - time.monotonic()
            assert left > 0, "%r not shown; screen output: %r" % (needle, self.out[since:])
            if select.select([self.fd], [], [], left)[0] and not self._read():
                raise AssertionError("exited before showing %r" % needle)
        return len(self.out)

    def _read(self):
        try:
            data = os.read(self.fd, 65536)
        except OSError as e:            # EIO: the child side is closed
            if e.errno != errno.EIO:
                raise
            data = b""
        self.out += data
        return data

    def resize(self, rows, cols):
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def wait(self):
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline and select.select([self.fd], [], [], 1)[0]:
            if not self._read():
                break
        self.status = os.waitpid(self.pid, 0)[1]
        return os.waitstatus_to_exitcode(self.status)

    def close(self):
        if self.status is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.status = os.waitpid(self.pid, 0)[1]
        os.close(self.fd)


def test_top_in_a_terminal(launcher, run_dir):
    fake = launcher()
    env = dict(os.environ, TERM="xterm", PYTHONPATH=ROOT, HERMES_RUN_DIR=run_dir)
    t = Pty(["top", "--interval", "0.2"], env)
    try:
        for text in (b"hermes top: default - pid 4000", b"4101", b"4102", b"restarting",
                     b"RATE/s", b"selected:  2233"):
            t.expect(text, 0)
        # A resize repaints everything at the new size.
        pos = len(t.out)
        t.resize(20, 90)
        pos = t.expect(b"4101", pos)
        # The launcher goes away: top says so and keeps trying ...
        fake.close()
        pos = t.expect(b"retrying every 0.2 s", pos)
        # ... and shows the new one when it is back.
        back = copy.deepcopy(STATUS)
        back["pid"] = 6000
        back["workers"][0]["pid"] = 6363
        launcher(status=back)
        t.expect(b"6363", pos)
        os.write(t.fd, b"q")
        assert t.wait() == 0
    finally:
        t.close()

