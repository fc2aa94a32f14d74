"""Closed-loop load from wrk (Debian's), with the case's Lua script plus
lua/common.lua, which prints one BENCHJSON summary line."""

import json
import os
import shutil
import subprocess
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


class WrkError(Exception):
    pass


def available():
    return shutil.which("wrk") is not None


def script(name):
    """The case script with common.lua appended, as a temporary file."""
    parts = []
    for f in (name + ".lua", "common.lua"):
        with open(os.path.join(HERE, "lua", f)) as fh:
            parts.append(fh.read())
    fd, path = tempfile.mkstemp(prefix="bench-", suffix=".lua")
    with os.fdopen(fd, "w") as fh:
        fh.write("\n".join(parts))
    return path


def run(port, lua, conns, duration, threads=1, timeout_s=5):
    """One wrk run; returns the BENCHJSON summary, latencies in ms.

    One wrk thread: the server and wrk share two cores, and one thread drives
    more than the Python workers can serve."""
    path = script(lua)
    argv = ["wrk", "-t%d" % threads, "-c%d" % conns, "-d%ds" % duration,
            "--timeout", "%ds" % timeout_s, "-s", path, "http://127.0.0.1:%d/" % port]
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
    finally:
        os.unlink(path)
    for line in r.stdout.splitlines():
        if line.startswith("BENCHJSON "):
            d = json.loads(line[len("BENCHJSON "):])
            break
    else:
        raise WrkError("wrk: no summary (exit %d): %s %s" % (r.returncode, r.stdout[-500:],
                                                             r.stderr[-500:]))
    secs = d["duration_us"] / 1e6
    errors = d["connect"] + d["read"] + d["write"] + d["status"]
    return {"n": d["requests"], "ok": d["requests"] - d["status"],
            "failed": errors, "timeouts": d["timeout"],
            "avg_ms": d["mean_us"] / 1000, "p50_ms": d["p50_us"] / 1000,
            "p99_ms": d["p99_us"] / 1000, "p999_ms": d["p999_us"] / 1000,
            "max_ms": d["max_us"] / 1000, "rps": round(d["requests"] / secs, 1),
            "workers": d["workers"],
            "errors": {k: d[k] for k in ("connect", "read", "write", "status", "timeout")}}
