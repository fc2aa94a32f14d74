"""Starting hermes-launch in tests: readiness via sd_notify, cleanup by pid."""

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:          # bench/ scripts import this too
    sys.path.insert(0, ROOT)


class Launcher:
    def __init__(self, proc, name, env):
        self.proc = proc
        self.name = name
        self.env = env
        st = self.status()
        self.port = int(st["listen"][0].rsplit(":", 1)[1])

    def ctl(self, *args, check=True):
        r = subprocess.run([sys.executable, "-m", "hermes.ctl", "--name", self.name] +
                           list(args), cwd=ROOT, env=self.env, capture_output=True, text=True,
                           timeout=30)
        if check and r.returncode:
            raise AssertionError("hermesctl %s: %s" % (" ".join(args), r.stderr))
        return r

    def status(self):
        from hermes import control
        return control.request(self.name, "status", run_dir=self.env["HERMES_RUN_DIR"])

    def ready(self, n=None):
        """Wait until n workers (all, by default) run and have attached."""
        def check():
            ws = self.status()["workers"]
            return (n is None or len(ws) == n) and \
                all(w["pid"] and w["state"] not in ("starting", "restarting") for w in ws)
        return self.wait_until(check, what="workers ready")

    def worker_pids(self):
        return [w["pid"] for w in self.status()["workers"]]

    def get(self, path="/", timeout=5):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            c.request("GET", path, headers={"Connection": "close"})
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()

    def whoami(self):
        status, body = self.get("/whoami")
        assert status == 200
        return json.loads(body)

    def wait_until(self, cond, timeout=10, what="condition"):
        """Poll launcher state until cond() holds (the launcher has no event for it)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            v = cond()
            if v:
                return v
            time.sleep(0.02)
        raise AssertionError("timed out waiting for %s" % what)

    def stop(self, sig=signal.SIGTERM, timeout=30):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def start(tmp_path, *args, workers=4, dispatch="hermes", listen="127.0.0.1:0", command=()):
    """Start a launcher and wait for its READY=1 (sd_notify)."""
    name = "test-%d-%s" % (os.getpid(), os.urandom(3).hex())
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    notify_path = str(tmp_path / ("notify-" + name))
    ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    ns.bind(notify_path)
    env = dict(os.environ, HERMES_RUN_DIR=str(run), NOTIFY_SOCKET=notify_path,
               PYTHONPATH=ROOT)
    argv = [sys.executable, "-m", "hermes.launch", "--listen", listen, "--workers",
            str(workers), "--name", name, "--dispatch", dispatch] + list(args)
    if command:
        argv += ["--"] + list(command)
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    ns.settimeout(20)
    try:
        while True:
            msg = ns.recv(4096).decode()
            if "READY=1" in msg:
                break
    except socket.timeout:
        proc.kill()
        raise AssertionError("launcher not ready: %s" % proc.communicate()[1])
    finally:
        ns.close()
        os.unlink(notify_path)
    return Launcher(proc, name, env)


def reap(launcher):
    """Teardown: stop the launcher; kill any worker it left, by pid."""
    pids = []
    try:
        pids = [p for p in launcher.worker_pids() if p]
    except Exception:   # noqa: BLE001 -- the launcher may be gone already
        pass
    launcher.stop()
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    # A launcher that had to be killed could not remove its pins: ours to remove.
    from hermes.control import PIN_ROOT
    shutil.rmtree(os.path.join(PIN_ROOT, launcher.name), ignore_errors=True)
