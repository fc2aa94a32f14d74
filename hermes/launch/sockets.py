"""Listening addresses and the sockets the launcher holds for its workers.

The launcher owns every listening socket for its whole life: a worker that dies
or is replaced leaves its socket, and the connections queued on it, to its
successor (DESIGN.md §3.5).
"""

import socket


class AddressError(ValueError):
    pass


def parse_address(text):
    """'HOST:PORT', '[V6]:PORT' or ':PORT' -> (family, host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep:
        raise AddressError("%s: expected HOST:PORT, [V6]:PORT or :PORT" % text)
    if host.startswith("[") and host.endswith("]"):
        host, family = host[1:-1], socket.AF_INET6
    elif ":" in host:
        raise AddressError("%s: put an IPv6 address in brackets: [%s]:%s" % (text, host, port))
    else:
        family = socket.AF_INET
    host = host or ("::" if family == socket.AF_INET6 else "0.0.0.0")
    try:
        socket.inet_pton(family, host)
    except OSError:
        try:
            host = socket.getaddrinfo(host, None, family, socket.SOCK_STREAM)[0][4][0]
        except socket.gaierror:
            raise AddressError("%s: unknown host %r" % (text, host)) from None
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise AddressError("%s: bad port %r" % (text, port))
    return family, host, int(port)


def format_address(family, host, port):
    return "[%s]:%d" % (host, port) if family == socket.AF_INET6 else "%s:%d" % (host, port)


def listener(family, host, port, reuseport, backlog):
    """A bound, listening TCP socket; OSError says why not."""
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuseport:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((host, port))
        s.listen(backlog)
    except BaseException:
        s.close()
        raise
    return s
