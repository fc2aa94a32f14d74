"""`hermesctl metrics [--serve ADDR]`: the pool in Prometheus text format.

One-shot, it prints one exposition (text format 0.0.4) of a `status` reply.  With
--serve HOST:PORT it is an exporter: every GET /metrics asks the launcher afresh;
when none answers the scrape still succeeds with `hermes_up 0`, so an alert can
tell "down" from "not scraped".  Values the launcher reports as null (outside
`--dispatch hermes`) are left out rather than exported as NaN.
"""

import signal
import sys

from . import UsageError
from .status import STATES, call

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# (name, type, help, worker field, scale)
_WORKER_SERIES = (
    ("hermes_worker_dispatched_total", "counter",
     "Connections the dispatcher steered to this worker.", "dispatched", 1),
    ("hermes_worker_connections", "gauge", "Open connections the worker reports.", "conns", 1),
    ("hermes_worker_pending", "gauge", "Events the worker has yet to handle.", "pending", 1),
    ("hermes_worker_loop_age_seconds", "gauge",
     "Time since the worker's event loop last reached its poll.", "loop_age_ms", 1e-3),
    ("hermes_worker_busy_seconds", "gauge",
     "How long the worker has been busy in its current loop iteration.", "busy_ms", 1e-3),
    ("hermes_worker_restarts_total", "counter",
     "Times the launcher replaced this worker.", "restarts", 1),
    ("hermes_worker_eligible", "gauge",
     "1 if the worker is in its group's eligible bitmap.", "eligible", 1),
)

_POLICY_SERIES = (
    ("hermes_policy_hang_threshold_seconds", "Busy time after which a worker counts as hung.",
     "hang_threshold_ms", 1e-3),
    ("hermes_policy_theta", "Load tolerance above the group average (theta).", "theta", 1),
    ("hermes_policy_stale_limit_seconds",
     "Age after which the dispatcher ignores a group's bitmap.", "stale_limit_ms", 1e-3),
)


def register(sub):
    p = sub.add_parser("metrics", help="Prometheus text exposition of the pool",
                       description="Print the pool's metrics in the Prometheus text format, "
                       "or serve them over HTTP at /metrics.")
    p.add_argument("--serve", metavar="ADDR",
                   help="serve at http://ADDR/metrics (HOST:PORT, [V6]:PORT or :PORT) until "
                   "interrupted")
    p.set_defaults(func=cmd_metrics)


def cmd_metrics(args):
    if args.serve:
        return serve(args.name, args.serve)
    sys.stdout.write(exposition(call(args.name, "status")))
    return 0


# --- the text format -------------------------------------------------------------------
def _label(v):
    return str(v).replace("\\", "\\\\").replace("\"", "\\\"").replace("\n", "\\n")


def _value(v):
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int):
        return str(v)
    v = float(v)
    if v != v:
        return "NaN"
    if v in (float("inf"), float("-inf")):
        return "+Inf" if v > 0 else "-Inf"
    return repr(v)


class _Out:
    def __init__(self):
        self.lines = []

    def family(self, name, kind, help_text):
        self.lines.append("# HELP %s %s" % (name, help_text))
        self.lines.append("# TYPE %s %s" % (name, kind))

    def sample(self, metric, value, **labels):
        if value is None:
            return
        lab = ",".join('%s="%s"' % (k, _label(v)) for k, v in labels.items())
        self.lines.append("%s%s %s" % (metric, "{%s}" % lab if lab else "", _value(value)))


def exposition(reply):
    """The text exposition of a status reply (None: no launcher answered, hermes_up 0)."""
    o = _Out()
    o.family("hermes_up", "gauge", "1 if the launcher answered its control socket.")
    o.sample("hermes_up", reply is not None)
    if reply is None:
        return "\n".join(o.lines) + "\n"
    o.family("hermes_info", "gauge", "The launcher's version and dispatch mode (always 1).")
    o.sample("hermes_info", 1, name=reply.get("name", ""), version=reply.get("version", ""),
             dispatch=reply.get("dispatch", ""))
    o.family("hermes_uptime_seconds", "gauge", "Time since the launcher started.")
    o.sample("hermes_uptime_seconds", reply.get("uptime_s"))
    workers = reply.get("workers") or []
    o.family("hermes_workers", "gauge", "Worker slots in the pool.")
    o.sample("hermes_workers", len(workers))
    for name, kind, help_text, field, scale in _WORKER_SERIES:
        o.family(name, kind, help_text)
        for w in workers:
            v = w.get(field)
            if v is not None and scale != 1:
                v = v * scale
            o.sample(name, v, worker=w.get("id"))
    o.family("hermes_worker_state", "gauge", "1 for the worker's current state, else 0.")
    for w in workers:
        state = w.get("state")
        for s in STATES + (() if state in STATES or state is None else (state,)):
            o.sample("hermes_worker_state", int(s == state), worker=w.get("id"), state=s)
    o.family("hermes_selected_total", "counter",
             "Connections the dispatcher steered by the scheduler's choice.")
    o.sample("hermes_selected_total", reply.get("selected"))
    o.family("hermes_fallbacks_total", "counter",
             "Connections left to the kernel's own choice, by reason.")
    for reason, n in sorted((reply.get("fallbacks") or {}).items()):
        o.sample("hermes_fallbacks_total", n, reason=reason)
    policy = reply.get("policy")
    if policy:
        for name, help_text, field, scale in _POLICY_SERIES:
            o.family(name, "gauge", help_text)
            v = policy.get(field)
            o.sample(name, None if v is None else v * scale)
        o.family("hermes_policy_group_mode", "gauge", "The group mode in force (always 1).")
        o.sample("hermes_policy_group_mode", 1, mode=policy.get("group_mode", ""))
    return "\n".join(o.lines) + "\n"


# --- the exporter ----------------------------------------------------------------------
def parse_addr(addr):
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise UsageError("--serve %s: expected HOST:PORT, [V6]:PORT or :PORT" % addr)
    v6 = host.startswith("[") and host.endswith("]")
    return (host[1:-1] if v6 else host), int(port), v6


def serve(name, addr):
    import http.server
    import socket

    from hermes.control import ControlError, check_name, request
    try:
        check_name(name)
    except ValueError as e:
        raise UsageError(str(e)) from None
    host, port, v6 = parse_addr(addr)

    class Handler(http.server.BaseHTTPRequestHandler):
        server_version = "hermesctl"

        def do_GET(self):
            if self.path.partition("?")[0] != "/metrics":
                return self._send(404, b"try /metrics\n", "text/plain")
            try:
                reply = request(name, "status")
            except ControlError:
                reply = None
            self._send(200, exposition(reply).encode(), CONTENT_TYPE)

        def _send(self, code, body, ctype):
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass        # scrapes every few seconds would flood the terminal

    class Server(http.server.ThreadingHTTPServer):
        address_family = socket.AF_INET6 if v6 else socket.AF_INET
        daemon_threads = True

    try:
        httpd = Server((host, port), Handler)
    except OSError as e:
        raise UsageError("--serve %s: %s" % (addr, e.strerror or e)) from None
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        bound = httpd.server_address
        print("hermesctl: serving metrics of %r at http://%s:%d/metrics"
              % (name, "[%s]" % bound[0] if v6 else bound[0], bound[1]),
              file=sys.stderr, flush=True)
        httpd.serve_forever()
    finally:
        httpd.server_close()
    return 0
