#!/usr/bin/env python3
"""Open-loop HTTP load: requests start at a fixed arrival rate whatever the server
does, and each latency is measured from the request's *intended* start, so time
spent queued behind a slow or hung worker is counted (a closed-loop generator
like wrk waits for the answer before sending more and hides it).

Every request is a new connection (Connection: close).  A /work request is
followed, pipelined, by /whoami, so each connection names the worker that served
it; "/" names it in its body.  Prints one JSON object:
    summary  n, ok, failed, timeouts, avg/p50/p99/p999/max (ms), per-worker counts,
             stalled (requests over 0.3/0.5/1/2 s), failure reasons, behind (ms the
             generator itself lagged its schedule at worst)
    bins     per --bin seconds of intended start: n, failed, timeouts, p99, max (ms)

    openloop.py --port P --rate R --duration S [--mix PATH@W,...] [--timeout S]
"""

import argparse
import asyncio
import gc
import json
import random
import re
import resource
import sys
import time

WORKER_RE = re.compile(rb'(?:worker (-?\d+)|"worker": (-?\d+))')
STALL_S = (0.3, 0.5, 1.0, 2.0)


def payload(path):
    if path.startswith("/work"):
        return (b"GET %s HTTP/1.1\r\nHost: bench\r\n\r\n"
                b"GET /whoami HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
                % path.encode(), 2)
    return b"GET %s HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n" % path.encode(), 1


class Exchange(asyncio.Protocol):
    def __init__(self, data, done):
        self.data, self.done, self.buf = data, done, bytearray()

    def connection_made(self, transport):
        transport.write(self.data)

    def data_received(self, data):
        self.buf += data

    def connection_lost(self, exc):
        if not self.done.done():
            if exc is None:
                self.done.set_result(bytes(self.buf))
            else:
                self.done.set_exception(exc)


async def one(loop, host, port, data, nresp, timeout):
    """(outcome, worker): outcome 'ok', 'timeout' or an error name."""
    done = loop.create_future()
    transport = None
    try:
        transport, _ = await asyncio.wait_for(
            loop.create_connection(lambda: Exchange(data, done), host, port), timeout)
        body = await asyncio.wait_for(done, timeout)
    except asyncio.TimeoutError:
        return "timeout", None
    except OSError as e:
        return type(e).__name__, None
    finally:
        if transport is not None:
            transport.abort()
    got = body.count(b"HTTP/1.1 200 ")
    # A worker stopping gracefully answers the request with Connection: close and
    # leaves the pipelined /whoami unanswered: the request itself was served.
    served_then_closed = nresp == 2 and got == 1 and b"\r\nConnection: close\r\n" in body
    if got != nresp and not served_then_closed:
        return "bad-response" if body else "empty-response", None
    m = None
    for m in WORKER_RE.finditer(body):
        pass
    return "ok", (int(m.group(1) or m.group(2)) if m else None)


def pct(sorted_vals, q):
    if not sorted_vals:
        return None
    k = min(len(sorted_vals) - 1, max(0, int(round(q / 100 * len(sorted_vals) + 0.5)) - 1))
    return sorted_vals[k]


async def run(args):
    loop = asyncio.get_running_loop()
    rng = random.Random(args.seed)
    paths, weights = zip(*args.mix)
    n_total = int(args.rate * args.duration)
    results = [None] * n_total
    behind = 0.0
    tasks = []

    async def fire(i, t_int, path):
        data, nresp = payload(path)
        outcome, worker = await one(loop, args.host, args.port, data, nresp, args.timeout)
        results[i] = (t_int - t0, time.monotonic() - t_int, outcome, worker)

    t0 = time.monotonic() + 0.05
    i = 0
    while i < n_total:
        now = time.monotonic()
        while i < n_total and t0 + i / args.rate <= now:
            t_int = t0 + i / args.rate
            behind = max(behind, now - t_int)
            tasks.append(loop.create_task(fire(i, t_int, rng.choices(paths, weights)[0])))
            i += 1
        if i < n_total:
            await asyncio.sleep(max(0.0, t0 + i / args.rate - time.monotonic()))
    await asyncio.gather(*tasks)
    return t0, results, behind


def summarize(t0, results, behind, args):
    lat_ok = sorted(r[1] for r in results if r[2] == "ok")
    reasons, workers = {}, {}
    for r in results:
        if r[2] != "ok":
            reasons[r[2]] = reasons.get(r[2], 0) + 1
        elif r[3] is not None:
            workers[str(r[3])] = workers.get(str(r[3]), 0) + 1
    # latencies of every request, failures counted at their full wait, for stall counts
    lat_all = [r[1] for r in results]
    ms = lambda v: None if v is None else round(v * 1000, 3)   # noqa: E731
    s = {"n": len(results), "ok": len(lat_ok), "failed": len(results) - len(lat_ok) -
         reasons.get("timeout", 0), "timeouts": reasons.get("timeout", 0),
         "avg_ms": ms(sum(lat_ok) / len(lat_ok)) if lat_ok else None,
         "p50_ms": ms(pct(lat_ok, 50)), "p99_ms": ms(pct(lat_ok, 99)),
         "p999_ms": ms(pct(lat_ok, 99.9)), "max_ms": ms(lat_ok[-1] if lat_ok else None),
         "rps": round(len(lat_ok) / args.duration, 1), "workers": workers,
         "reasons": reasons, "behind_ms": ms(behind),
         "stalled": {str(t): sum(1 for v in lat_all if v > t) for t in STALL_S}}
    nb = int(args.duration / args.bin + 0.999)
    bins = [[] for _ in range(nb)]
    for r in results:
        bins[min(nb - 1, int(r[0] / args.bin))].append(r)
    out_bins = []
    for b in bins:
        lat = sorted(r[1] for r in b if r[2] == "ok")
        out_bins.append({"n": len(b), "failed": sum(1 for r in b if r[2] not in ("ok", "timeout")),
                         "timeouts": sum(1 for r in b if r[2] == "timeout"),
                         "p99_ms": ms(pct(lat, 99)), "max_ms": ms(lat[-1] if lat else None)})
    return {"t0": t0, "bin_s": args.bin, "summary": s, "bins": out_bins}


def parse_mix(text):
    """'/@8,/work?cpu_ms=5@2' -> [('/', 8.0), ('/work?cpu_ms=5', 2.0)]; weight 1 if omitted."""
    out = []
    for item in text.split(","):
        path, at, w = item.partition("@")
        out.append((path, float(w) if at else 1.0))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--rate", type=float, required=True, help="requests per second")
    p.add_argument("--duration", type=float, required=True, help="seconds of arrivals")
    p.add_argument("--mix", type=parse_mix, default=[("/", 1.0)],
                   help="PATH@WEIGHT,... e.g. '/@8,/work?cpu_ms=5@2'")
    p.add_argument("--timeout", type=float, default=10.0, help="per request (s)")
    p.add_argument("--bin", type=float, default=0.25, help="timeline bin (s)")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    gc.disable()            # a collection pause would show up as server latency
    t0, results, behind = asyncio.run(run(args))
    json.dump(summarize(t0, results, behind, args), sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
