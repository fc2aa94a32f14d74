"""A hermes-launch pool under benchmark: start (ready via sd_notify), status,
per-worker pids and /proc counters, stop by pid.  Every pool started is stopped
by stop_all(), which the harness runs on any exit, Ctrl-C included."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import procfs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_live = []


class PoolError(Exception):
    pass


class Pool:
    def __init__(self, mode, workers, port, python=sys.executable, extra=()):
        self.mode, self.workers, self.port = mode, workers, port
        self.name = "bench-%s-%d" % (mode, os.getpid())
        self.tmp = tempfile.mkdtemp(prefix="hermes-bench-")
        self.env = dict(os.environ, HERMES_RUN_DIR=os.path.join(self.tmp, "run"),
                        PYTHONPATH=ROOT)
        os.makedirs(self.env["HERMES_RUN_DIR"])
        self.argv = [python, "-m", "hermes.launch", "--listen", "127.0.0.1:%d" % port,
                     "--workers", str(workers), "--name", self.name, "--dispatch", mode,
                     "--log-file", os.path.join(self.tmp, "launch.log")] + list(extra)
        self.proc = None
        self.stopped = set()       # workers we SIGSTOPped: continued before any stop

    # -- lifecycle
    def start(self, timeout=30):
        notify = os.path.join(self.tmp, "notify")
        ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        ns.bind(notify)
        env = dict(self.env, NOTIFY_SOCKET=notify)
        self.proc = subprocess.Popen(self.argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _live.append(self)
        ns.settimeout(timeout)
        try:
            while b"READY=1" not in ns.recv(4096):
                pass
        except socket.timeout:
            self.stop()
            raise PoolError("%s pool not ready in %ds: %s" % (self.mode, timeout, self.log()))
        finally:
            ns.close()
            os.unlink(notify)
        # port 0 asks the kernel for a free port: read back the one bound
        self.port = int(self.status()["listen"][0].rsplit(":", 1)[1])
        self.wait_workers()
        return self

    @property
    def pid(self):
        return self.proc.pid

    def log(self):
        try:
            with open(os.path.join(self.tmp, "launch.log")) as f:
                return f.read()[-2000:]
        except OSError:
            return ""

    def stop(self, timeout=20):
        if self.proc is None:
            return
        pids = []
        try:
            pids = self.worker_pids()
        except Exception:       # noqa: BLE001 -- the launcher may be gone
            pass
        for pid in self.stopped | set(pids):
            _signal(pid, signal.SIGCONT)
        self.stopped.clear()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for pid in pids:       # workers die with the launcher (PDEATHSIG); make sure
            if procfs.alive(pid):
                _signal(pid, signal.SIGKILL)
        if self.proc.stderr:
            self.proc.stderr.close()
        if self in _live:
            _live.remove(self)
        self.proc = None
        self.last_log = self.log()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- inspection
    def status(self):
        from hermes import control
        return control.request(self.name, "status", run_dir=self.env["HERMES_RUN_DIR"])

    def worker_pids(self):
        return [w["pid"] for w in self.status()["workers"]]

    def wait_workers(self, timeout=20):
        """Until every slot has a live worker that answers on the port."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            pids = self.worker_pids()
            if all(pids) and len(pids) == self.workers and all(procfs.alive(p) for p in pids):
                break
            time.sleep(0.05)
        else:
            raise PoolError("%s pool: workers not up: %s" % (self.mode, self.log()))
        return pids

    def snapshot(self):
        """Per slot: pid, CPU seconds, dispatched (hermes only), socket fds."""
        st = self.status()
        out = []
        for w in st["workers"]:
            pid = w["pid"]
            out.append({"id": w["id"], "pid": pid,
                        "cpu": procfs.cpu_s(pid) if pid else None,
                        "dispatched": w["dispatched"], "eligible": w["eligible"],
                        "state": w["state"]})
        return {"t": time.monotonic(), "workers": out, "launcher_cpu": procfs.cpu_s(self.pid),
                "fallbacks": st.get("fallbacks") or {}, "selected": st.get("selected")}

    # -- faults
    def sigstop(self, pid):
        self.stopped.add(pid)
        _signal(pid, signal.SIGSTOP)

    def sigcont(self, pid):
        _signal(pid, signal.SIGCONT)
        self.stopped.discard(pid)


def _signal(pid, sig):
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def stop_all():
    for p in list(_live):
        try:
            p.stop()
        except Exception as e:      # noqa: BLE001 -- keep stopping the rest
            print("bench: stopping %s pool: %s" % (p.mode, e), file=sys.stderr)


def json_dump(obj, path):
    with open(path, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
