"""The built-in demo worker: a small HTTP/1.1 keep-alive server for Hermes.

hermes-launch runs it when no COMMAND is given (`python3 -m hermes.demo`); it is
also the benchmark target, so the three dispatch modes are measured with the same
server.  Standard library only: one thread, select.epoll (level-triggered),
non-blocking sockets, and the Hermes SDK hooks called by hand around the poll.

Endpoints (GET or HEAD):
    /                                   a short text line naming the worker
    /whoami                             {"worker": ID, "pid": PID}
    /work?cpu_ms=N&block_ms=M&bytes=K   burn N ms of CPU, then block the whole loop
                                        for M ms (a stuck synchronous call), then
                                        answer K bytes; N, M <= 60000, K <= 64 MiB;
                                        all optional (0), anything else is a 400
    anything else                       404 (405 for other methods on these paths)

HTTP: pipelined and partial requests, Content-Length request bodies (discarded),
every response with Content-Length.  HTTP/1.1 keeps the connection unless
`Connection: close`; HTTP/1.0 closes unless `Connection: keep-alive`.  A malformed
request gets a 4xx and the connection is closed.

Sockets arrive as systemd hands them (sd_listen_fds(3)): LISTEN_FDS=N means fds
3..3+N-1, honoured only when LISTEN_PID is this process (else they are meant for
someone else and ignored); LISTEN_FDNAMES is optional.  `--listen HOST:PORT` binds
one itself, to run without a launcher.  With HERMES_DISPATCH=exclusive the
listeners are shared by every worker, so they are polled with EPOLLEXCLUSIVE (one
waiter woken per connection instead of all of them).

Environment: HERMES_WORKER_ID (else HERMES_SLOT, else -1) names the worker in
/whoami; HERMES_GRACEFUL_TIMEOUT (seconds, default 30) bounds a graceful stop; the
Hermes state variables (see hermes.sdk.attach) turn the SDK hooks on.

Signals: TERM stops gracefully: the listeners leave the poll set and our copies of
their fds are closed (the sockets themselves belong to the launcher and stay
open), the worker marks itself draining, requests already received are answered
(with `Connection: close`), idle connections are closed, and the process exits 0
when no connection is left or the timeout has passed.  INT and QUIT kill it at
once (the kernel's default action: no core file).
"""

import argparse
import collections
import errno
import json
import os
import resource
import select
import signal
import socket
import stat
import sys
import time

MAX_HEAD = 16 * 1024            # request line + headers
MAX_BODY = 1 << 20              # request bodies are read and dropped
MAX_MS = 60000
MAX_BYTES = 64 << 20
HIGH_WATER = 1 << 20            # stop reading/parsing while this much output is queued
ACCEPT_BATCH = 64               # accepts per wake-up, so one listener cannot starve the rest
IOV_BATCH = 64                  # buffers per sendmsg (IOV_MAX is 1024)
_FILL = memoryview(b"x" * 65536)  # /work bodies are views of this, never K-byte copies

_EPOLLEXCLUSIVE = getattr(select, "EPOLLEXCLUSIVE", 1 << 28)   # Linux 4.5
_IN, _OUT = select.EPOLLIN, select.EPOLLOUT

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            413: "Content Too Large", 431: "Request Header Fields Too Large",
            501: "Not Implemented", 505: "HTTP Version Not Supported"}
_TCHAR = frozenset(b"!#$%&'*+-.^_`|~0123456789"
                   b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


class StartError(Exception):
    """The worker cannot start: printed as one line, exit status 2."""


# --- sockets ---------------------------------------------------------------------------
def listen_fds(env=None, unset=True):
    """The listening sockets passed systemd-style, as socket objects (fd order)."""
    env = os.environ if env is None else env
    try:
        pid, n = int(env.get("LISTEN_PID", "")), int(env.get("LISTEN_FDS", ""))
    except ValueError:
        return []
    if pid != os.getpid() or n <= 0:
        return []
    names = env.get("LISTEN_FDNAMES", "").split(":")
    socks = []
    for fd in range(3, 3 + n):
        try:
            st = os.fstat(fd)
        except OSError:
            raise StartError("LISTEN_FDS=%d but fd %d is not open" % (n, fd)) from None
        if not stat.S_ISSOCK(st.st_mode):
            raise StartError("fd %d (%s) is not a socket" % (fd, _name(names, fd)))
        s = socket.socket(fileno=fd)
        if not s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            s.detach()
            raise StartError("fd %d (%s) is not a listening socket" % (fd, _name(names, fd)))
        os.set_inheritable(fd, False)
        socks.append(s)
    if unset:           # like sd_listen_fds(1): our children are not the addressees
        for k in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            env.pop(k, None)
    return socks


def _name(names, fd):
    i = fd - 3
    return names[i] if i < len(names) and names[i] else "unnamed"


def bind(addr):
    """A listening socket on HOST:PORT, [V6]:PORT or :PORT, with SO_REUSEPORT so
    several demo processes can share a port (plain reuseport, no launcher)."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise StartError("--listen %s: expected HOST:PORT, [V6]:PORT or :PORT" % addr)
    v6 = host.startswith("[") and host.endswith("]")
    host = host[1:-1] if v6 else (host or "0.0.0.0")
    try:
        return socket.create_server((host, int(port)), backlog=1024, reuse_port=True,
                                    family=socket.AF_INET6 if v6 else socket.AF_INET)
    except OSError as e:
        raise StartError("--listen %s: %s" % (addr, e.strerror or e)) from None


# --- HTTP ------------------------------------------------------------------------------
class BadRequest(Exception):
    def __init__(self, status, why):
        super().__init__(why)
        self.status = status


class Request:
    __slots__ = ("method", "target", "http10", "keep", "end")

    def __init__(self, method, target, http10, keep, end):
        self.method, self.target, self.http10, self.keep, self.end = (
            method, target, http10, keep, end)


def parse(buf, pos):
    """The request starting at buf[pos], or None while it is incomplete.

    Request.end is where the next one starts (after any body).  Raises BadRequest
    for anything malformed: the connection cannot be trusted to stay in frame.
    """
    while buf.startswith(b"\r\n", pos):      # RFC 9112 2.2: tolerate blank lines before
        pos += 2
    head_end = buf.find(b"\r\n\r\n", pos, pos + MAX_HEAD)
    if head_end < 0:
        if len(buf) - pos >= MAX_HEAD:
            raise BadRequest(431, "request head over %d bytes" % MAX_HEAD)
        return None
    lines = bytes(buf[pos:head_end]).split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[0] or not _TCHAR.issuperset(parts[0]):
        raise BadRequest(400, "malformed request line")
    method, target, version = parts
    if version == b"HTTP/1.1":
        http10 = False
    elif version == b"HTTP/1.0":
        http10 = True
    elif version.startswith(b"HTTP/") and version[5:6].isdigit():
        raise BadRequest(505, "only HTTP/1.0 and HTTP/1.1")
    else:
        raise BadRequest(400, "malformed request line")
    if not target.startswith(b"/"):
        raise BadRequest(400, "only origin-form request targets")
    conn_tokens, length = set(), None
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or not _TCHAR.issuperset(name):
            raise BadRequest(400, "malformed header line")
        name, value = name.lower(), value.strip(b" \t")
        if name == b"connection":
            conn_tokens.update(t.strip().lower() for t in value.split(b","))
        elif name == b"content-length":
            if not value.isdigit() or (length is not None and int(value) != length):
                raise BadRequest(400, "bad Content-Length")
            length = int(value)
        elif name == b"transfer-encoding":
            raise BadRequest(501, "request bodies must use Content-Length")
    length = length or 0
    if length > MAX_BODY:
        raise BadRequest(413, "request body over %d bytes" % MAX_BODY)
    end = head_end + 4 + length
    if len(buf) < end:
        return None
    if http10:
        keep = b"keep-alive" in conn_tokens and b"close" not in conn_tokens
    else:
        keep = b"close" not in conn_tokens
    return Request(method.decode("ascii"), target.decode("latin-1"), http10, keep, end)


def work_params(query):
    """cpu_ms, block_ms, bytes from a /work query string; BadRequest if invalid."""
    limits = {"cpu_ms": MAX_MS, "block_ms": MAX_MS, "bytes": MAX_BYTES}
    got = {}
    for item in query.split("&") if query else ():
        key, eq, value = item.partition("=")
        if key not in limits or key in got or not value.isdigit() or not value.isascii():
            raise BadRequest(400, "bad /work parameter %r (cpu_ms, block_ms <= %d; "
                             "bytes <= %d; each at most once)" % (item, MAX_MS, MAX_BYTES))
        got[key] = int(value)
        if got[key] > limits[key]:
            raise BadRequest(400, "%s=%s is over the limit of %d" % (key, value, limits[key]))
    return got.get("cpu_ms", 0), got.get("block_ms", 0), got.get("bytes", 0)


def burn_cpu(ms):
    """Spin for `ms` of this thread's CPU time (not wall time: preemption adds to it)."""
    end = time.thread_time() + ms / 1000
    while time.thread_time() < end:
        pass


def response(status, body=b"", ctype="text/plain; charset=utf-8", keep=True,
             http10=False, head=False, extra=""):
    """The buffers of one response; `body` is bytes or a list of buffers."""
    chunks = body if isinstance(body, list) else [memoryview(body)]
    length = sum(len(c) for c in chunks)
    conn = ("Connection: keep-alive\r\n" if http10 else "") if keep else "Connection: close\r\n"
    head_bytes = ("HTTP/1.1 %d %s\r\nServer: hermes-demo\r\nContent-Type: %s\r\n"
                  "Content-Length: %d\r\n%s%s\r\n"
                  % (status, _REASONS[status], ctype, length, conn, extra)).encode("latin-1")
    return [memoryview(head_bytes)] + ([] if head else chunks)


def fill(n):
    """n bytes of body as views of one shared buffer."""
    whole, rest = divmod(n, len(_FILL))
    return [_FILL] * whole + ([_FILL[:rest]] if rest else [])


# --- the server ------------------------------------------------------------------------
class Conn:
    __slots__ = ("sock", "fd", "inbuf", "out", "out_len", "eof", "closing", "served", "open",
                 "mask")

    def __init__(self, sock):
        self.sock, self.fd = sock, sock.fileno()
        self.inbuf = bytearray()
        self.out = collections.deque()    # memoryviews still to send
        self.out_len = 0
        self.eof = False                  # the peer has finished sending
        self.closing = False              # close once `out` is sent; serve no more
        self.served = 0                   # requests answered on this connection
        self.open = True
        self.mask = _IN

    def idle(self):
        """Between requests on a kept-alive connection.  A new connection that has
        not sent its first request yet is not idle: a stopping worker still owes it
        an answer (its client sent, or is sending, a request to an open listener)."""
        return self.served and not self.inbuf and not self.out and not self.closing


class Server:
    def __init__(self, listeners, worker=None, worker_id=-1, exclusive=False,
                 graceful_timeout=30.0):
        self.listeners = {s.fileno(): s for s in listeners}
        self.worker = worker
        self.worker_id = worker_id
        self.exclusive = exclusive
        self.graceful_timeout = graceful_timeout
        self.conns = {}
        self.stopping = False         # set by SIGTERM
        self.deadline = None          # set once the graceful stop has begun
        self.ep = select.epoll()
        self._wake_r = self._wake_w = -1

    # -- signals
    def install_signals(self):
        """TERM -> graceful stop; INT, QUIT -> exit now.  The wake-up pipe makes
        epoll return, since PEP 475 would otherwise resume the poll."""
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        self.ep.register(self._wake_r, _IN)
        signal.signal(signal.SIGTERM, self._on_term)
        # INT and QUIT kill at once in the kernel, not through a Python handler: one
        # arriving just before a blocking call (block_ms) would only run after it.
        # QUIT's default also dumps core, which a demo worker has no use for.
        resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGQUIT, signal.SIG_DFL)

    def _on_term(self, signum, frame):
        self.stopping = True

    # -- the loop
    def run(self):
        flags = _IN | (_EPOLLEXCLUSIVE if self.exclusive else 0)
        for fd, s in self.listeners.items():
            s.setblocking(False)
            self.ep.register(fd, flags)
        w = self.worker
        while True:
            if self.stopping and self.deadline is None:
                self._begin_drain()
            if self.deadline is not None:
                self._close_idle()
                left = self.deadline - time.monotonic()
                if not self.conns:
                    return 0
                if left <= 0:
                    print("hermes-demo: worker %s: graceful timeout, closing %d connection(s)"
                          % (self.worker_id, len(self.conns)), file=sys.stderr)
                    return 0
                timeout = left
            else:
                timeout = -1
            if w is not None:
                w.before_poll()
            events = self.ep.poll(timeout)
            if w is not None:
                w.after_poll(len(events))
            for fd, ev in events:
                c = self.conns.get(fd)
                if c is not None:
                    if (ev & ~_OUT and self._recv(c)) or (ev & _OUT and c.open):
                        self._flush(c)
                elif fd in self.listeners:
                    self._accept(self.listeners[fd])
                elif fd == self._wake_r:
                    _drain_pipe(fd)
                if w is not None:
                    w.event_done()

    def close(self):
        for c in list(self.conns.values()):
            self._close(c)
        for s in self.listeners.values():
            s.close()
        self.listeners.clear()
        self.ep.close()
        if self._wake_r >= 0:
            signal.set_wakeup_fd(-1)
            os.close(self._wake_r)
            os.close(self._wake_w)
            self._wake_r = self._wake_w = -1

    def _begin_drain(self):
        self.deadline = time.monotonic() + self.graceful_timeout
        if self.worker is not None:
            # Hand the slot over now: a replacement (HUP reload) may attach to it
            # while we finish our connections, and a slot has one writer.
            self.worker.detach()
        for fd, s in self.listeners.items():
            self.ep.unregister(fd)
            s.close()       # our fd only: the launcher still holds the socket
        self.listeners.clear()

    def _close_idle(self):
        for c in list(self.conns.values()):
            if c.idle():
                if self._recv(c):   # a request may have landed since the last poll
                    self._flush(c)
                if c.open and c.idle():
                    self._close(c)

    # -- connections
    def _accept(self, lsock):
        for _ in range(ACCEPT_BATCH):
            try:
                sock, _ = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno == errno.ECONNABORTED:
                    continue
                # EMFILE and friends: the connection stays queued; say so, poll on.
                print("hermes-demo: accept: %s" % e.strerror, file=sys.stderr)
                return
            sock.setblocking(False)
            if sock.family != socket.AF_UNIX:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            c = Conn(sock)
            self.conns[c.fd] = c
            self.ep.register(c.fd, _IN)
            if self.worker is not None:
                self.worker.conn_opened()

    def _close(self, c):
        c.open = False
        del self.conns[c.fd]
        self.ep.unregister(c.fd)
        c.sock.close()
        if self.worker is not None:
            self.worker.conn_closed()

    def _recv(self, c):
        """Read what has arrived; False when there is nothing more to do for c."""
        if c.eof or c.closing:
            return True         # HUP/ERR while we only write: the send will tell
        try:
            data = c.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            self._close(c)
            return False
        if data:
            c.inbuf += data
        else:
            c.eof = True
        return True

    def _flush(self, c):
        """Send, answer what is complete, send again; then close or re-arm epoll."""
        if not self._send(c):
            return
        if not c.closing and c.out_len < HIGH_WATER:
            self._serve(c)
            if not c.open:
                return
        if c.closing and not c.out:
            self._close(c)
            return
        reading = not (c.closing or c.eof) and c.out_len < HIGH_WATER
        mask = (_OUT if c.out else 0) | (_IN if reading else 0)
        if mask != c.mask:
            c.mask = mask
            self.ep.modify(c.fd, mask)

    def _serve(self, c):
        """Answer the complete requests in inbuf, in order, up to the high-water mark."""
        buf, pos = c.inbuf, 0
        while c.out_len < HIGH_WATER:
            try:
                req = parse(buf, pos)
            except BadRequest as e:
                self._queue(c, response(e.status, ("%s\n" % e).encode(), keep=False))
                c.closing = True
                break
            if req is None:
                c.closing = c.eof   # the peer has stopped: a partial request never ends
                break
            pos = req.end
            keep = req.keep and self.deadline is None
            self._queue(c, self._handle(req, keep))
            c.served += 1
            # Send as we go: a pipelined client sees each answer as soon as it exists.
            if not self._send(c):
                return
            if not keep:
                c.closing = True
                break
        if c.closing:
            buf.clear()
        else:
            del buf[:pos]

    def _queue(self, c, bufs):
        c.out.extend(bufs)
        c.out_len += sum(len(b) for b in bufs)

    def _send(self, c):
        """Write as much of c.out as the socket takes; False if c had to be closed."""
        out = c.out
        while out:
            bufs = [out[i] for i in range(min(IOV_BATCH, len(out)))]
            try:
                n = c.sock.sendmsg(bufs)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:                 # EPIPE, ECONNRESET: the client has gone
                self._close(c)
                return False
            c.out_len -= n
            while n:
                b = out[0]
                if len(b) <= n:
                    n -= len(b)
                    out.popleft()
                else:
                    out[0] = b[n:]
                    n = 0
        return True

    # -- the application
    def _handle(self, req, keep):
        if req.method not in ("GET", "HEAD"):
            path = req.target.partition("?")[0]
            status = 405 if path in ("/", "/whoami", "/work") else 404
            return response(status, b"%d\n" % status, keep=keep, http10=req.http10,
                            extra="Allow: GET, HEAD\r\n" if status == 405 else "")
        head = req.method == "HEAD"
        path, _, query = req.target.partition("?")
        if path == "/":
            body = ("Hermes demo worker %s (pid %d)\n" % (self.worker_id, os.getpid())).encode()
        elif path == "/whoami":
            return response(200, json.dumps({"worker": self.worker_id, "pid": os.getpid()})
                            .encode() + b"\n", ctype="application/json", keep=keep,
                            http10=req.http10, head=head)
        elif path == "/work":
            try:
                cpu_ms, block_ms, nbytes = work_params(query)
            except BadRequest as e:
                return response(400, ("%s\n" % e).encode(), keep=keep, http10=req.http10,
                                head=head)
            if cpu_ms:
                burn_cpu(cpu_ms)
            if block_ms:
                time.sleep(block_ms / 1000)     # the whole loop stops, as a stuck call would
            return response(200, fill(nbytes), ctype="application/octet-stream", keep=keep,
                            http10=req.http10, head=head)
        else:
            body = b"not found\n"
            return response(404, body, keep=keep, http10=req.http10, head=head)
        return response(200, body, keep=keep, http10=req.http10, head=head)


def _drain_pipe(fd):
    try:
        while os.read(fd, 512):
            pass
    except (BlockingIOError, InterruptedError):
        pass


# --- entry point -----------------------------------------------------------------------
def _worker_id(env):
    for key in ("HERMES_WORKER_ID", "HERMES_SLOT"):
        if env.get(key, "") != "":
            try:
                return int(env[key])
            except ValueError:
                raise StartError("%s=%r is not a number" % (key, env[key])) from None
    return -1


def _graceful_timeout(env):
    raw = env.get("HERMES_GRACEFUL_TIMEOUT", "30")
    try:
        value = float(raw)
    except ValueError:
        value = -1
    if not value >= 0:
        raise StartError("HERMES_GRACEFUL_TIMEOUT=%r: expected seconds >= 0" % raw)
    return value


def main(argv=None):
    p = argparse.ArgumentParser(
        prog="hermes-demo", description="The Hermes demo worker: an HTTP/1.1 server taking "
        "its listening sockets from the launcher (LISTEN_FDS), or from --listen.")
    p.add_argument("--listen", metavar="ADDR", action="append", default=[],
                   help="also listen on HOST:PORT, [V6]:PORT or :PORT (repeatable)")
    args = p.parse_args(argv)
    env = os.environ
    listeners = []
    try:
        worker_id = _worker_id(env)
        graceful = _graceful_timeout(env)
        listeners = listen_fds(env)
        listeners += [bind(a) for a in args.listen]
        if not listeners:
            raise StartError("no listening sockets: run under hermes-launch (LISTEN_FDS, "
                             "LISTEN_PID) or pass --listen HOST:PORT")
        from .sdk import LayoutError, attach
        try:
            worker = attach(env)
        except (LayoutError, OSError) as e:
            raise StartError("cannot join the Hermes pool: %s" % e) from None
    except StartError as e:
        for s in listeners:
            s.close()
        print("hermes-demo: %s" % e, file=sys.stderr)
        return 2
    server = Server(listeners, worker, worker_id,
                    exclusive=env.get("HERMES_DISPATCH") == "exclusive",
                    graceful_timeout=graceful)
    server.install_signals()
    try:
        return server.run()
    finally:
        server.close()
        if worker is not None:
            worker.detach()


if __name__ == "__main__":
    sys.exit(main())
