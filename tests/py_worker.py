"""A tiny Python worker for tests/test_csdk.py, the twin of tests/c/epoll_worker.c.

    python3 tests/py_worker.py FD

Serves the listening socket FD through a HermesSelector: answers each request with
"slot N pid P\n" and closes.  Prints "ready" once attached; SIGTERM detaches.
"""

import os
import selectors
import signal
import socket
import sys

from hermes.sdk import HermesSelector


def main():
    lsock = socket.socket(fileno=int(sys.argv[1]))
    lsock.setblocking(False)
    sel = HermesSelector()
    worker = sel.worker
    slot = worker.slot if worker else -1
    reply = b"slot %d pid %d\n" % (slot, os.getpid())
    sel.register(lsock, selectors.EVENT_READ)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print("ready", flush=True)
    try:
        while True:
            for key, _ in sel.select():
                if key.fileobj is lsock:
                    try:
                        conn, _ = lsock.accept()
                    except BlockingIOError:
                        continue
                    conn.setblocking(False)
                    sel.register(conn, selectors.EVENT_READ)
                    continue
                conn = key.fileobj
                try:
                    if conn.recv(512):
                        conn.sendall(reply)
                except BlockingIOError:
                    continue
                except OSError:
                    pass
                sel.unregister(conn)
                conn.close()
    finally:
        if worker:
            worker.detach()


if __name__ == "__main__":
    main()
