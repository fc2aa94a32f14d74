"""Observed mode: an unmodified server (Debian's uvicorn) under hermes-launch.

No one here wrote uvicorn and it knows nothing of Hermes: it takes its socket
from fd 3 (`--fd 3`).  One worker is blocked synchronously (`/sleep`); with
observed mode new requests avoid it, without it some stall behind it.
"""

import http.client
import json
import os
import shutil
import subprocess
import threading
import time

import pytest

from launchutil import ROOT, reap, start

UVICORN = ["/usr/bin/python3", "-m", "uvicorn", "--fd", "3", "--app-dir",
           os.path.join(ROOT, "tests"), "--lifespan", "off", "--log-level", "warning",
           "asgi_app:app"]


@pytest.fixture
def uvicorn(bpf, tmp_path):
    r = subprocess.run(UVICORN[:3] + ["--version"], capture_output=True)
    if r.returncode:
        from conftest import _gate
        _gate("Debian's python3-uvicorn is not installed (make deps)")
    made = []

    def make(*args, workers=4):
        made.append(start(tmp_path, *args, workers=workers, command=UVICORN))
        return made[-1]
    yield make
    for lch in made:
        reap(lch)


def _block_one(lch, seconds):
    """Block one worker for `seconds` through a keep-alive connection; -> its id."""
    c = http.client.HTTPConnection("127.0.0.1", lch.port, timeout=seconds + 10)
    c.request("GET", "/")
    victim = json.loads(c.getresponse().read())["worker"]
    c.request("GET", "/sleep?s=%s" % seconds)
    t = threading.Thread(target=lambda: (c.getresponse().read(), c.close()))
    t.start()
    return victim, t


def _requests(lch, n, budget=2):
    """n one-shot requests with a 2 s budget: (served by, failures).  The blocked
    worker still has more than that to sleep, so one sent to it fails."""
    served, failed = [], 0
    for _ in range(n):
        try:
            c = http.client.HTTPConnection("127.0.0.1", lch.port, timeout=budget)
            c.request("GET", "/", headers={"Connection": "close"})
            served.append(json.loads(c.getresponse().read())["worker"])
            c.close()
        except OSError:
            failed += 1
    return served, failed


def test_observed_uvicorn_avoids_a_blocked_worker(uvicorn):
    lch = uvicorn()
    lch.wait_until(lambda: all(w["observed"] and w["pid"] for w in lch.status()["workers"]),
                   what="all workers observed")
    victim, t = _block_one(lch, 4)
    lch.wait_until(lambda: lch.status()["workers"][victim]["state"] == "hung",
                   what="the blocked worker seen as hung")
    served, failed = _requests(lch, 60)
    st = lch.status()
    t.join()
    assert failed == 0 and victim not in served, (failed, served, st["fallbacks"],
                                                  [w["state"] for w in st["workers"]])
    assert len(set(served)) == 3


def test_without_observation_requests_stall(uvicorn):
    lch = uvicorn("--observe", "off")
    victim, t = _block_one(lch, 4)
    time.sleep(0.5)        # the same head start the observed run waited for
    served, failed = _requests(lch, 60)
    t.join()
    assert failed >= 1, served
