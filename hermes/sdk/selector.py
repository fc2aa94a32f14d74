"""Loop integrations: a drop-in selector, and asyncio instrumentation.

HermesSelector wraps any selectors.BaseSelector.  Around each select() it runs
the worker's hooks; it counts connections as the non-listening sockets
registered with it, and treats the events of one select() as handled by the
time the next select() is called.
"""

import os
import selectors
import socket
import stat


def _is_connection(fileobj):
    """A socket that is not listening (accept sockets are not connections)."""
    try:
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            return False
        s = socket.socket(fileno=fd)
        try:
            return not s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        finally:
            s.detach()
    except (OSError, ValueError):
        return False


class HermesSelector(selectors.BaseSelector):
    """A selector that publishes the worker's state; plain pass-through without one."""

    def __init__(self, worker=None, selector=None):
        if worker is None:
            from . import attach
            worker = attach()
        self.worker = worker
        self._sel = selector if selector is not None else selectors.DefaultSelector()
        self._conns = set()

    def register(self, fileobj, events, data=None):
        key = self._sel.register(fileobj, events, data)
        if self.worker is not None and _is_connection(fileobj):
            self._conns.add(key.fd)
            self.worker.conn_opened()
        return key

    def unregister(self, fileobj):
        key = self._sel.unregister(fileobj)
        if key.fd in self._conns:
            self._conns.discard(key.fd)
            self.worker.conn_closed()
        return key

    def modify(self, fileobj, events, data=None):
        return self._sel.modify(fileobj, events, data)

    def select(self, timeout=None):
        w = self.worker
        if w is None:
            return self._sel.select(timeout)
        if w.pending:
            w.set_pending(0)      # the last batch is done: we are back at the poll
        w.before_poll()
        ready = self._sel.select(timeout)
        w.after_poll(len(ready))
        return ready

    def close(self):
        self._sel.close()

    def get_key(self, fileobj):
        return self._sel.get_key(fileobj)

    def get_map(self):
        return self._sel.get_map()

    def fileno(self):
        return self._sel.fileno()


def instrument(loop=None, worker=None):
    """Instrument an asyncio selector event loop (the running one by default).

    Returns the HermesSelector now in use, or None when the loop is not a
    selector loop (e.g. uvloop) or this process is not a Hermes worker.
    """
    import asyncio
    loop = loop or asyncio.get_running_loop()
    inner = getattr(loop, "_selector", None)
    if inner is None:
        return None
    if isinstance(inner, HermesSelector):
        return inner
    if worker is None:
        from . import attach
        worker = attach()
    if worker is None:
        return None
    sel = HermesSelector(worker, inner)
    loop._selector = sel      # asyncio's BaseSelectorEventLoop polls through this attribute
    return sel
