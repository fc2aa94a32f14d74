"""Runs the cases against the three dispatch modes and collects the figures.

The three pools (same worker count, built-in demo worker) stay up for the whole
run on their own ports; for every case and load the modes run back to back, in an
order that rotates, so the machine's drift falls on all of them alike."""

import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time

import cases as C
import procfs
import wrkdrive
from pool import Pool

HERE = os.path.dirname(os.path.abspath(__file__))


def sd(values):
    vals = [v for v in values if v is not None]
    return statistics.pstdev(vals) if len(vals) > 1 else 0.0


def rel_sd(values):
    """Standard deviation over the mean (coefficient of variation): comparable
    between runs of different size."""
    vals = [v for v in values if v is not None]
    m = sum(vals) / len(vals) if vals else 0
    return sd(vals) / m if m else None


class Faults(threading.Thread):
    """SIGSTOP/SIGCONT or SIGKILL one worker at set times; for hermes, polls
    status to time how long until the dispatcher stops choosing it."""

    def __init__(self, pool, case, at, hang_s, start):
        super().__init__(daemon=True)
        self.pool, self.case, self.at, self.hang_s, self.start_t = pool, case, at, hang_s, start
        self.events = []          # (monotonic, what)
        self.detect_ms = None
        self.pre = None           # snapshot taken just before the fault
        self.error = None

    def _sleep_until(self, t):
        while True:
            d = t - time.monotonic()
            if d <= 0:
                return
            time.sleep(min(d, 0.05))

    def run(self):
        try:
            self._run()
        except Exception as e:     # noqa: BLE001 -- reported with the results
            self.error = repr(e)

    def _run(self):
        self._sleep_until(self.start_t + self.at)
        self.pre = self.pool.snapshot()
        victim = self.pre["workers"][0]["pid"]
        if self.case.fault == "kill":
            t = time.monotonic()
            os.kill(victim, 9)
            self.events.append((t, "SIGKILL worker 0"))
            return
        t = time.monotonic()
        self.pool.sigstop(victim)
        self.events.append((t, "SIGSTOP worker 0"))
        end = t + self.hang_s
        while time.monotonic() < end:
            if self.pool.mode == "hermes" and self.detect_ms is None:
                w = self.pool.status()["workers"][0]
                if w["eligible"] is False:
                    self.detect_ms = (time.monotonic() - t) * 1000
            time.sleep(0.01 if self.detect_ms is None else 0.05)
        self.pool.sigcont(victim)
        self.events.append((time.monotonic(), "SIGCONT worker 0"))


def run_open(pool, case, rate, duration, fault_at, hang_s):
    argv = [sys.executable, os.path.join(HERE, "openloop.py"), "--port", str(pool.port),
            "--rate", str(rate), "--duration", str(duration), "--mix", case.mix,
            "--timeout", "15"]
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    faults = None
    if case.fault:
        faults = Faults(pool, case, fault_at, hang_s, start)
        faults.start()
    try:
        out, err = proc.communicate(timeout=duration + 60)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    if faults:
        faults.join(30)
    if proc.returncode:
        raise RuntimeError("openloop: exit %d: %s" % (proc.returncode, err[-800:]))
    d = json.loads(out)
    res = d["summary"]
    res["bins"] = d["bins"]
    res["bin_s"] = d["bin_s"]
    if faults:
        res["events"] = [(round(t - d["t0"], 3), what) for t, what in faults.events]
        res["detect_ms"] = faults.detect_ms
        res["fault_error"] = faults.error
    return res, (faults.pre if faults else None)


def measure(pool, case, load_value, quick):
    """One run of one case at one load on one pool: the load generator's figures
    plus per-worker connections and CPU time."""
    duration = case.durations["quick" if quick else "full"]
    before = pool.snapshot()
    busy0, kids0, t_start = procfs.busy_s(), _children_cpu(), time.monotonic()
    base_socks = {w["pid"]: procfs.socket_fds(w["pid"]) for w in before["workers"]}
    held = {}
    if case.gen == "wrk":
        sampler = None
        if case.key == "3":     # connections per worker: sockets held mid-run
            def sample():
                time.sleep(duration / 2)
                for w in before["workers"]:
                    n = procfs.socket_fds(w["pid"])
                    if n is not None:
                        held[str(w["id"])] = n - (base_socks[w["pid"]] or 0)
            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
        res = wrkdrive.run(pool.port, case.lua, load_value, duration)
        if sampler:
            sampler.join()
        pre = None
    else:
        at, hang = C.fault_times(case, quick)
        res, pre = run_open(pool, case, load_value, duration, at, hang)
    after = pool.snapshot()
    wall = time.monotonic() - t_start
    res["cpu"] = worker_cpu(before, pre, after)
    # CPU busy on the machine but not ours (pool, load generator): other tenants
    ours = sum(res["cpu"].values()) + (after["launcher_cpu"] or 0) - \
        (before["launcher_cpu"] or 0) + _children_cpu() - kids0
    res["gen_cpu_s"] = round(_children_cpu() - kids0, 3)
    res["other_cores"] = round(max(0.0, procfs.busy_s() - busy0 - ours) / wall, 2)
    res["launcher_cpu_s"] = round((after["launcher_cpu"] or 0) - (before["launcher_cpu"] or 0), 3)
    disp = {}
    for w0, w1 in zip(before["workers"], after["workers"]):
        if w0["dispatched"] is not None and w1["dispatched"] is not None:
            disp[str(w0["id"])] = w1["dispatched"] - w0["dispatched"]
    res["dispatched"] = disp
    if case.key == "3":
        res["conns"], res["conns_source"] = held, "sockets held mid-run (/proc/PID/fd)"
    elif res.get("workers"):
        res["conns"], res["conns_source"] = res["workers"], "responses naming the worker"
    elif disp:
        res["conns"], res["conns_source"] = disp, "dispatched (BPF counters)"
    else:
        res["conns"], res["conns_source"] = {}, None
    counts = [res["conns"].get(str(i), 0) for i in range(pool.workers)] if res["conns"] else []
    res["conn_sd"] = sd(counts) if counts else None
    res["conn_cv"] = rel_sd(counts) if counts else None
    cpus = list(res["cpu"].values())
    res["cpu_sd"] = sd(cpus)
    res["cpu_cv"] = rel_sd(cpus)
    fb = {k: after["fallbacks"].get(k, 0) - before["fallbacks"].get(k, 0)
          for k in after["fallbacks"]}
    res["fallbacks"] = {k: v for k, v in fb.items() if v}
    return res


def _children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def worker_cpu(before, pre, after):
    """CPU seconds per slot over the run; a worker killed mid-run counts up to the
    snapshot taken just before the kill, its replacement from its start."""
    out = {}
    for i, w0 in enumerate(before["workers"]):
        w1 = after["workers"][i]
        if w1["pid"] == w0["pid"]:
            out[str(i)] = (w1["cpu"] or 0) - (w0["cpu"] or 0)
        else:
            lost = (pre["workers"][i]["cpu"] - w0["cpu"]) if pre and \
                pre["workers"][i]["pid"] == w0["pid"] and pre["workers"][i]["cpu"] else 0
            out[str(i)] = lost + (w1["cpu"] or 0)
    return {k: round(v, 3) for k, v in out.items()}


def run(quick=False, rounds=None, only=None, log=print):
    """All cases (or `only`, keys), all modes; returns the results document."""
    rounds = rounds or (1 if quick else 2)
    sel = [c for c in C.all_cases() if not only or c.key in only]
    doc = {"quick": quick, "rounds": rounds, "workers": C.WORKERS, "started": time.time(),
           "loadavg_start": os.getloadavg(), "cases": []}
    pools = {}
    try:
        for mode in C.MODES:
            pools[mode] = Pool(mode, C.WORKERS, 0).start()
        step = 0
        for case in sel:
            loads = case.loads if not quick or len(case.loads) == 1 else \
                {"medium": case.loads["medium"]}
            entry = {"key": case.key, "title": case.title, "what": case.what, "gen": case.gen,
                     "loads": {}}
            doc["cases"].append(entry)
            for load, value in loads.items():
                runs = {m: [] for m in C.MODES}
                for r in range(rounds):
                    order = C.MODES[step % 3:] + C.MODES[:step % 3]
                    step += 1
                    for mode in order:
                        pools[mode].wait_workers()
                        res = measure(pools[mode], case, value, quick)
                        res["round"] = r
                        runs[mode].append(res)
                        log("case %s %-6s %-9s round %d: %8.1f req/s  avg %7.2f ms  p99 %8.2f"
                            " ms  p99.9 %8.2f ms  failed %d  timeouts %d  others %.2f cores"
                            % (case.key, load, mode, r, res["rps"], res["avg_ms"] or 0,
                               res["p99_ms"] or 0, res["p999_ms"] or 0, res["failed"],
                               res["timeouts"], res["other_cores"]))
                entry["loads"][load] = {"value": value, "runs": runs}
    finally:
        for p in pools.values():
            p.stop()
    doc["loadavg_end"] = os.getloadavg()
    doc["elapsed_s"] = round(time.time() - doc["started"], 1)
    return doc
