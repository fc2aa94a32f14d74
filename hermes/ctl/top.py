"""`hermesctl top`: the pool live, full screen (curses).

Every interval it asks the launcher for `status` and redraws: the `status` table
plus each worker's dispatch rate (the change in its dispatched counter over the
time between two replies) and a totals row.  When the launcher stops answering
it says so and keeps retrying; it follows terminal resizes.  Keys: q quits,
space or r refreshes now.
"""

import argparse
import sys
import time

from . import UsageError
from .status import COLUMNS, cells, counters, dash, duration, policy_text, table

TOP_COLUMNS = COLUMNS[:9] + (("RATE/s", ">"),) + COLUMNS[9:]


def register(sub):
    p = sub.add_parser("top", help="live full-screen view of the pool",
                       description="A live view of the pool (curses): worker states, load "
                       "and dispatch rates. q quits, space refreshes now.")
    p.add_argument("--interval", metavar="S", type=_seconds, default=1.0,
                   help="seconds between refreshes (default 1)")
    p.set_defaults(func=cmd_top)


def _seconds(text):
    try:
        v = float(text)
    except ValueError:
        v = 0
    if not 0.05 <= v <= 3600:
        raise argparse.ArgumentTypeError("--interval %s: expected seconds in 0.05..3600" % text)
    return v


# --- what is shown (pure: tested without a terminal) ------------------------------------
def _delta(a, b):
    return None if a is None or b is None or b < a else b - a


def rates(prev, cur, dt):
    """{worker id: dispatches per second} between two replies `dt` s apart;
    None where unknown (first reply, no counter, counter went back)."""
    before = {w.get("id"): w.get("dispatched") for w in (prev or {}).get("workers") or ()}
    out = {}
    for w in cur.get("workers") or ():
        d = _delta(before.get(w.get("id")), w.get("dispatched"))
        out[w.get("id")] = None if d is None or dt <= 0 else d / dt
    return out


def _rate(v):
    return "-" if v is None else ("%.1f" % v if v < 100 else "%d" % round(v))


def _sum(values):
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def screen(name, reply, prev, dt, error=None, since_ok=None, width=80, interval=1.0):
    """The lines of one frame, each (text, style) with style "title", "head", "error"
    or ""."""
    title = "hermes top: %s" % name
    if reply is not None and error is None:
        title += " - pid %s, dispatch %s, up %s" % (
            dash(reply.get("pid")), dash(reply.get("dispatch")),
            duration(reply.get("uptime_s") or 0))
    clock = time.strftime("%H:%M:%S")
    title = title + " " * max(1, width - len(title) - len(clock)) + clock
    lines = [(title, "title")]
    if error is not None:
        lines.append(("", ""))
        lines.append(("no answer: %s" % error, "error"))
        lines.append(("retrying every %s s%s" % (
            "%g" % interval,
            "" if since_ok is None else "; last answer %s ago" % duration(since_ok)), ""))
        lines.append(("", ""))
        lines.append(("q quits", ""))
        return lines
    workers = reply.get("workers") or []
    r = rates(prev, reply, dt) if prev is not None else {}
    rows = []
    for w in workers:
        c = cells(w)
        rows.append(c[:9] + [_rate(r.get(w.get("id")))] + c[9:])
    total = ["total", "", "", "", "", "",
             dash(_sum(w.get("pending") for w in workers)),
             dash(_sum(w.get("conns") for w in workers)),
             dash(_sum(w.get("dispatched") for w in workers)),
             _rate(_sum(r.values()) if r else None),
             dash(_sum(w.get("restarts") for w in workers))]
    tab = table(TOP_COLUMNS, rows + [total])
    lines.append(("listen: %s" % (", ".join(reply.get("listen") or ()) or "-"), ""))
    lines.append(("policy: %s" % policy_text(reply.get("policy")), ""))
    lines.append(("", ""))
    lines.append((tab[0], "head"))
    lines.extend((t, "") for t in tab[1:-1])
    lines.append((tab[-1], "head"))
    lines.append(("", ""))
    sel = _delta((prev or {}).get("selected"), reply.get("selected"))
    extra = "" if sel is None or dt <= 0 else "  (selected %s/s)" % _rate(sel / dt)
    lines.append((counters(reply) + extra, ""))
    lines.append(("", ""))
    lines.append(("q quits, space refreshes; every %g s" % interval, ""))
    return lines


# --- the terminal -------------------------------------------------------------------------
def cmd_top(args):
    from hermes.control import check_name
    try:
        check_name(args.name)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise UsageError("top needs a terminal; `hermesctl status` prints the same once")
    import curses
    try:
        return curses.wrapper(_run, args.name, args.interval)
    except curses.error as e:
        raise UsageError("top: cannot drive this terminal (%s)" % e) from None


def _run(scr, name, interval):
    import curses

    from hermes.control import ControlError, request
    try:
        curses.curs_set(0)
    except curses.error:
        pass                                    # a terminal without an invisible cursor
    styles = {"title": curses.A_REVERSE, "head": curses.A_BOLD, "error": curses.A_BOLD, "": 0}
    reply = prev = error = None
    dt, last_ok, next_at = 0.0, None, 0.0

    def draw():
        h, w = scr.getmaxyx()
        since = None if last_ok is None else time.monotonic() - last_ok
        scr.erase()
        for y, (text, style) in enumerate(screen(name, reply, prev, dt, error, since, w,
                                                 interval)[:h]):
            try:
                scr.addnstr(y, 0, text, w, styles[style])
            except curses.error:
                pass                            # the bottom-right cell: written, then error
        scr.refresh()

    while True:
        if time.monotonic() >= next_at:
            try:
                cur = request(name, "status")
                now = time.monotonic()
                if reply is not None and error is None:
                    prev, dt = reply, now - last_ok
                else:
                    prev, dt = None, 0.0        # no rates across an outage
                reply, error, last_ok = cur, None, now
            except ControlError as e:
                error = str(e)
            next_at = time.monotonic() + interval
            draw()
        scr.timeout(max(1, int((next_at - time.monotonic()) * 1000)))
        ch = scr.getch()
        if ch in (ord("q"), ord("Q")):
            return 0
        if ch == curses.KEY_RESIZE:
            scr.clear()                         # repaint everything at the new size
            draw()
        elif ch in (ord(" "), ord("r")):
            next_at = 0.0
