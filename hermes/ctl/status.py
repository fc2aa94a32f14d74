"""`hermesctl status`: a running pool at a glance; the formatting `top` shares.

The launcher answers `status` on its control socket (hermes.control) with:
    {"name", "pid", "version", "dispatch", "listen": [...], "uptime_s",
     "policy": {"hang_threshold_ms", "theta", "stale_limit_ms", "group_mode"} | null,
     "workers": [{"id", "pid", "state", "eligible", "loop_age_ms", "busy_ms",
                  "pending", "conns", "dispatched", "restarts"}],
     "fallbacks": {reason: count}, "selected": count}
Per-worker fields other than id, pid, state and restarts are null outside
`--dispatch hermes`; pid is null while a worker is being restarted.
"""

import json

from . import UsageError

STATES = ("idle", "busy", "hung", "draining", "starting", "restarting")

COLUMNS = (("ID", ">"), ("PID", ">"), ("STATE", "<"), ("ELIGIBLE", "<"), ("LOOP AGE", ">"),
           ("BUSY", ">"), ("PENDING", ">"), ("CONNS", ">"), ("DISPATCHED", ">"),
           ("RESTARTS", ">"))


def register(sub):
    p = sub.add_parser("status", help="show the pool: workers, dispatch, fallbacks",
                       description="Show a running launcher's pool: dispatch mode, policy, "
                       "and per worker its state, eligibility, loop age, load and counters.")
    p.add_argument("--json", action="store_true", help="the launcher's reply as JSON")
    p.set_defaults(func=cmd_status)


def call(name, cmd, **args):
    """hermes.control.request, with every failure as a UsageError (one line, exit 2)."""
    from hermes.control import ControlError, request
    try:
        return request(name, cmd, **args)
    except (ControlError, ValueError) as e:
        raise UsageError(str(e)) from None


def cmd_status(args):
    reply = call(args.name, "status")
    if args.json:
        print(json.dumps(reply, indent=2))
        return 0
    for line in summary(reply):
        print(line)
    print()
    rows = [cells(w) for w in reply.get("workers") or ()]
    for line in table(COLUMNS, rows):
        print(line)
    print()
    print(counters(reply))
    for line in warnings(reply):
        print(line)
    return 0


def warnings(reply):
    """What the launcher found inconsistent in shared memory (a buggy or hostile worker)."""
    out = ["warning: %s" % w for w in reply.get("warnings") or ()]
    for w in reply.get("workers") or ():
        out += ["warning: worker %s: %s" % (w["id"], x) for x in w.get("warnings") or ()]
    return out


# --- formatting ------------------------------------------------------------------------
def dash(v):
    return "-" if v is None else str(v)


def yes_no(v):
    return "-" if v is None else ("yes" if v else "no")


def ms(v):
    """A duration given in ms, short: 0.4 ms, 37 ms, 2.5 s, 3m07s."""
    if v is None:
        return "-"
    if v == 0:
        return "0 ms"
    if v < 10:
        return "%.1f ms" % v
    if v < 1000:
        return "%d ms" % v
    return duration(v / 1000, precise=True)


def duration(s, precise=False):
    if s < 60:
        return ("%.1f s" % s) if precise else ("%d s" % s)
    m, s = divmod(int(s), 60)
    if m < 60:
        return "%dm%02ds" % (m, s)
    h, m = divmod(m, 60)
    if h < 24:
        return "%dh%02dm" % (h, m)
    d, h = divmod(h, 24)
    return "%dd%02dh" % (d, h)


def cells(w):
    """One worker's row, as strings in COLUMNS order."""
    return [dash(w.get("id")), dash(w.get("pid")), dash(w.get("state")),
            yes_no(w.get("eligible")), ms(w.get("loop_age_ms")), ms(w.get("busy_ms")),
            dash(w.get("pending")), dash(w.get("conns")), dash(w.get("dispatched")),
            dash(w.get("restarts"))]


def table(columns, rows):
    """Lines of a left/right-aligned table; widths fit the widest cell."""
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, (h, _) in enumerate(columns)]

    def line(values):
        return "  ".join(("%-*s" if a == "<" else "%*s") % (wd, v)
                         for v, wd, (_, a) in zip(values, widths, columns)).rstrip()
    return [line([h for h, _ in columns])] + [line(r) for r in rows]


def policy_text(p):
    if not p:
        return "-"
    return ("hang threshold %s, theta %s, stale limit %s, group mode %s"
            % (ms(p.get("hang_threshold_ms")), dash(p.get("theta")),
               ms(p.get("stale_limit_ms")), dash(p.get("group_mode"))))


def summary(reply):
    """The lines above the worker table."""
    head = "hermes %s: pid %s, version %s, dispatch %s" % (
        dash(reply.get("name")), dash(reply.get("pid")), dash(reply.get("version")),
        dash(reply.get("dispatch")))
    if reply.get("uptime_s") is not None:
        head += ", up %s" % duration(reply["uptime_s"])
    return [head,
            "listen:    %s" % (", ".join(reply.get("listen") or ()) or "-"),
            "policy:    %s" % policy_text(reply.get("policy"))]


def counters(reply):
    """The line below the worker table: kernel dispatch decisions."""
    fb = reply.get("fallbacks") or {}
    fallbacks = ", ".join("%s %s" % (k, fb[k]) for k in sorted(fb)) or "none"
    return "selected:  %s    fallbacks: %s" % (dash(reply.get("selected")), fallbacks)
