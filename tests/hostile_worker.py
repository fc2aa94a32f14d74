"""A worker that attaches like any SDK worker, serves, and writes garbage into
shared memory: its own slot, another worker's, and the group's bitmap."""

import os
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from hermes import sdk  # noqa: E402

w = sdk.attach()
st, lay = w.state, w.state.layout
listener = socket.socket(fileno=3)
listener.settimeout(0.005)
victim = (w.slot + 1) % st.policy()["nr_workers"]
huge, future = 2 ** 64 - 1, time.monotonic_ns() + 3600 * 10 ** 9
while True:
    now = time.monotonic_ns()
    wst = st.wst
    wst[lay.slot_word(w.slot, "pending")] = huge
    wst[lay.slot_word(w.slot, "conns")] = huge
    wst[lay.slot_word(w.slot, "busy_since_ns")] = future
    wst[lay.slot_word(w.slot, "pid")] = 1
    wst[lay.slot_word(victim, "heartbeat_ns")] = future
    st.sched[lay.group_word(0, "bitmap")] = 2 ** 64 - 1     # every bit, most beyond the pool
    st.sched[lay.group_word(0, "stamp_ns")] = now
    try:
        c, _ = listener.accept()
    except socket.timeout:
        continue
    with c:
        c.recv(4096)
        c.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 7\r\n\r\nhostile")
