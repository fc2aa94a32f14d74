"""The reliability soak: steady open-loop load on a hermes pool while a chaos loop
SIGKILLs, SIGSTOPs/SIGCONTs workers, reloads (HUP) and grows/shrinks the pool
(TTIN/TTOU) every few seconds.  Counts failed requests (and which fault they
followed), and samples the launcher's fds, RSS, children and pins over time."""

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

import cases as C
import procfs
from pool import Pool

HERE = os.path.dirname(os.path.abspath(__file__))
RATE = 200                 # requests/s, a new connection each
MIN_W, MAX_W = 2, 6
ACTIONS = ("kill", "stop", "hup", "ttin", "ttou")


def pins(name):
    d = "/sys/fs/bpf/hermes/%s" % name
    try:
        return len(os.listdir(d))
    except OSError:
        return 0


class Sampler(threading.Thread):
    def __init__(self, pool, every=5.0):
        super().__init__(daemon=True)
        self.pool, self.every, self.samples = pool, every, []
        self.halt = threading.Event()
        self.seen = set()           # every worker pid ever seen
        self.t0 = time.monotonic()

    def sample(self):
        pid = self.pool.pid
        kids = procfs.children(pid)
        self.seen.update(kids)
        try:
            nw = len(self.pool.status()["workers"])
        except Exception:           # noqa: BLE001 -- counted as a gap
            nw = None
        self.samples.append({"t": round(time.monotonic() - self.t0, 1),
                             "fds": procfs.fd_count(pid), "rss_kib": procfs.rss_kib(pid),
                             "children": len(kids), "workers": nw,
                             "pins": pins(self.pool.name)})

    def run(self):
        while not self.halt.wait(self.every):
            self.sample()


def chaos(pool, deadline, rng, events, t0, log):
    """Random faults until deadline; events get (t, action, detail)."""
    while time.monotonic() < deadline - 5:
        time.sleep(rng.uniform(2.0, 5.0))
        if pool.proc.poll() is not None:
            events.append((round(time.monotonic() - t0, 2), "launcher-exited",
                           "status %s" % pool.proc.returncode))
            log("soak: the launcher exited (%s): no more faults" % pool.proc.returncode)
            return
        try:
            ws = [w for w in pool.status()["workers"] if w["pid"]]
        except Exception as e:      # noqa: BLE001 -- the launcher must answer; note it
            events.append((round(time.monotonic() - t0, 2), "status-error", repr(e)))
            log("soak: status: %r" % e)
            continue
        act = rng.choice(ACTIONS)
        if act == "ttin" and len(ws) >= MAX_W:
            act = "ttou"
        if act == "ttou" and len(ws) <= MIN_W:
            act = "ttin"
        t = time.monotonic() - t0
        victim = rng.choice(ws) if ws else None
        if act == "kill" and victim:
            os.kill(victim["pid"], signal.SIGKILL)
            detail = "worker %d pid %d" % (victim["id"], victim["pid"])
        elif act == "stop" and victim:
            hold = rng.uniform(1.0, 3.0)
            pool.sigstop(victim["pid"])
            time.sleep(hold)
            pool.sigcont(victim["pid"])
            detail = "worker %d pid %d for %.1f s" % (victim["id"], victim["pid"], hold)
        else:
            os.kill(pool.pid, {"hup": signal.SIGHUP, "ttin": signal.SIGTTIN,
                               "ttou": signal.SIGTTOU}[act])
            detail = "%d workers before" % len(ws)
        events.append((round(t, 2), act, detail))
        log("soak %6.1f s: %s %s" % (t, act, detail))


def run(minutes, out, log=print, seed=None):
    seed = seed if seed is not None else int(time.time())
    rng = random.Random(seed)
    dur = minutes * 60
    pool = Pool("hermes", C.WORKERS, 0).start()
    events = []
    try:
        samp = Sampler(pool)
        samp.sample()
        samp.start()
        argv = [sys.executable, os.path.join(HERE, "openloop.py"), "--port", str(pool.port),
                "--rate", str(RATE), "--duration", str(dur), "--mix", C.FAULT_MIX,
                "--timeout", "15", "--bin", "1"]
        t0 = time.monotonic()
        gen = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            chaos(pool, t0 + dur, rng, events, t0, log)
            outp, err = gen.communicate(timeout=dur + 120)
        except BaseException:
            gen.kill()
            gen.wait()
            raise
        if gen.returncode:
            raise RuntimeError("openloop: %s" % err[-800:])
        load = json.loads(outp)
        time.sleep(2)                   # let the last reload or respawn settle
        samp.halt.set()
        samp.join()
        samp.sample()
        try:
            final = pool.status()
        except Exception as e:      # noqa: BLE001 -- the launcher died: say so
            final = {"workers": [], "error": repr(e)}
    finally:
        launcher_pid = pool.pid if pool.proc else None
        name = pool.name
        pool.stop()
    rc = None
    leftovers = sorted(p for p in samp.seen if procfs.alive(p))
    pins_left = pins(name)
    sock_left = os.path.exists(os.path.join(pool.env["HERMES_RUN_DIR"], name + ".sock"))
    doc = {"minutes": minutes, "seed": seed, "rate": RATE, "events": events,
           "samples": samp.samples, "load": load["summary"], "bins": load["bins"],
           "gen_t0_offset": load["t0"] - t0, "final": final, "launcher_pid": launcher_pid,
           "leftover_pids": leftovers, "pins_left": pins_left, "sock_left": sock_left,
           "launcher_rc": rc, "launcher_log_tail": pool.last_log[-1500:]}
    with open(os.path.splitext(out)[0] + ".json", "w") as f:
        json.dump(doc, f, indent=1)
    return write(doc, out)


def _slope(xs, ys):
    n = len(xs)
    if n < 2:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else 0.0


def write(doc, out):
    s, samples, events = doc["load"], doc["samples"], doc["events"]
    # failures per second of intended start, charged to the last fault before them
    blame = {}
    for i, b in enumerate(doc["bins"]):
        bad = b["failed"] + b["timeouts"]
        if not bad:
            continue
        t = i + doc["gen_t0_offset"]
        prior = [e for e in events if e[0] <= t + 1]
        key = prior[-1][1] if prior and t + 1 - prior[-1][0] <= 6 else "no fault within 6 s"
        blame[key] = blame.get(key, 0) + bad
    counts = {}
    for e in events:
        counts[e[1]] = counts.get(e[1], 0) + 1
    steady = [x for x in samples if x["t"] >= 30] or samples
    fds = [x["fds"] for x in steady if x["fds"] is not None]
    rss = [x["rss_kib"] for x in steady if x["rss_kib"] is not None]
    ts = [x["t"] for x in steady if x["rss_kib"] is not None]
    rss_slope = _slope(ts, rss) * 60          # KiB per minute
    lines = []
    w = lines.append
    w("# Hermes reliability soak")
    w("")
    w("Generated by `make soak` (`bench/run soak --minutes %g`), seed %d. Do not edit: rerun."
      % (doc["minutes"], doc["seed"]))
    w("")
    w("One `--dispatch hermes` pool of %d demo workers under %d new connections/s "
      "(open loop: GET / 90%%, /work?cpu_ms=5 10%%) for %g minutes, while every 2-5 s one "
      "of: SIGKILL a random worker, SIGSTOP one for 1-3 s then SIGCONT, HUP (rolling "
      "reload), TTIN (grow, to at most %d), TTOU (shrink, to at least %d)."
      % (C.WORKERS, doc["rate"], doc["minutes"], MAX_W, MIN_W))
    w("")
    w("## Verdict")
    w("")
    bad = s["failed"] + s["timeouts"]
    w("| check | result | |")
    w("|---|---|---|")
    w("| failed requests | %d failed, %d timed out of %d (%.4f%%) | %s |"
      % (s["failed"], s["timeouts"], s["n"], 100.0 * bad / max(1, s["n"]),
         "ok" if not bad else "**not zero**"))
    if fds:
        # fds follow the pool size (a pipe per worker): compare like with like
        by_n = {}
        for x in steady:
            if x["fds"] is not None and x["workers"] is not None:
                by_n.setdefault(x["workers"], []).append(x["fds"])
        grew = [n for n, v in by_n.items() if v[-1] > v[0] + 2]
        w("| launcher fds (after 30 s) | min %d, max %d; by pool size, first -> last: %s | %s |"
          % (min(fds), max(fds), ", ".join("%d workers %d -> %d" % (n, v[0], v[-1])
                                           for n, v in sorted(by_n.items())),
             "flat" if not grew else "**grew**"))
    if rss:
        w("| launcher RSS (after 30 s) | min %d KiB, max %d KiB, first %d, last %d; trend "
          "%+.1f KiB/min | %s |" % (min(rss), max(rss), rss[0], rss[-1], rss_slope,
                                   "flat" if abs(rss_slope) < 64 else "**trending**"))
    w("| processes left after stop | %s | %s |" % (doc["leftover_pids"] or "none",
                                                   "ok" if not doc["leftover_pids"] else "**leak**"))
    w("| pins left after stop | %d | %s |" % (doc["pins_left"],
                                              "ok" if not doc["pins_left"] else "**leak**"))
    w("| control socket left | %s | %s |" % (doc["sock_left"],
                                             "ok" if not doc["sock_left"] else "**leak**"))
    restarts = sum(x.get("restarts") or 0 for x in doc["final"]["workers"])
    w("| worker restarts (slots alive at the end) | %d, against %d SIGKILLs | |"
      % (restarts, counts.get("kill", 0)))
    w("| latency (ok requests) | avg %s ms, p99 %s ms, p99.9 %s ms, max %s ms | |"
      % (s["avg_ms"], s["p99_ms"], s["p999_ms"], s["max_ms"]))
    if doc["final"].get("error"):
        w("")
        w("**The launcher was gone at the end** (%s). Its log ended:" % doc["final"]["error"])
        w("")
        w("```")
        w(doc.get("launcher_log_tail", "").rstrip())
        w("```")
    w("")
    w("Faults injected: %s." % ", ".join("%s %d" % kv for kv in sorted(counts.items())))
    if s["reasons"]:
        w("Failure kinds: %s." % ", ".join("%s %d" % kv for kv in sorted(s["reasons"].items())))
    if blame:
        w("Failed or timed-out requests by the last fault before them (within 6 s): %s."
          % ", ".join("%s %d" % kv for kv in sorted(blame.items())))
    w("")
    w("## Launcher over time")
    w("")
    w("| t (s) | fds | RSS KiB | children | workers | pins |")
    w("|---|---|---|---|---|---|")
    step = max(1, len(samples) // 24)
    for x in samples[::step] + ([samples[-1]] if (len(samples) - 1) % step else []):
        w("| %s | %s | %s | %s | %s | %s |" % (x["t"], x["fds"], x["rss_kib"], x["children"],
                                               x["workers"], x["pins"]))
    w("")
    w("## Fault log")
    w("")
    for e in events:
        w("- %.1f s: %s %s" % tuple(e))
    with open(out, "w") as f:
        f.write("\n".join(lines) + "\n")
    return out
