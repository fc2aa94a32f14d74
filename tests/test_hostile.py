"""A hostile worker can skew dispatch inside the pool, never break it."""

import os
import socket
import sys


from launchutil import ROOT


def test_garbage_in_shared_memory_drops_nothing(launcher):
    # Every worker runs the hostile script: the worst case, all of them lying.
    lch = launcher(workers=3, command=[sys.executable,
                                       os.path.join(ROOT, "tests", "hostile_worker.py")])
    ok = 0
    for _ in range(300):
        with socket.create_connection(("127.0.0.1", lch.port), timeout=5) as c:
            c.settimeout(5)
            c.sendall(b"GET / HTTP/1.0\r\n\r\n")
            ok += c.recv(64).startswith(b"HTTP/1.0 200")
    assert ok == 300
    st = lch.status()
    assert any("beyond the pool" in w for w in st["warnings"]), st["warnings"]
    texts = " ".join(x for w in st["workers"] for x in w["warnings"])
    for what in ("implausible", "in the future", "claims pid"):
        assert what in texts, texts
    assert lch.proc.poll() is None          # the launcher carries on
