"""A worker process for tests/test_dispatch.py: the SDK hooks in a tight loop.

Attaches to the slot the environment names (as under a launcher), writes "ready"
on stdout, then runs loop iterations without blocking, with open connections and
pending events drifting at random so the published bitmap keeps changing.  It
stops when its stdin reaches end of file and prints "<iterations> <bitmap changes>".
"""

import os
import random
import sys

import hermes.sdk


def main():
    worker = hermes.sdk.attach()
    os.set_blocking(0, False)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    group = worker.slot // worker.state.layout.group_size
    rnd = random.Random(worker.slot)
    iterations = changes = 0
    last = None
    while True:
        for _ in range(256):
            worker.after_poll(rnd.randrange(3))
            if worker.conns < 8 and rnd.random() < 0.5:
                worker.conn_opened()
            elif worker.conns:
                worker.conn_closed()
            worker.event_done(rnd.randrange(3))
            worker.before_poll()
            bitmap = worker.state.bitmap(group)
            changes += bitmap != last
            last = bitmap
        iterations += 256
        try:
            if os.read(0, 1) == b"":
                break
        except BlockingIOError:
            pass
    worker.detach()
    sys.stdout.write("%d %d\n" % (iterations, changes))


if __name__ == "__main__":
    main()
