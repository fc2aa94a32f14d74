"""hermes-launch: listening sockets, N workers, supervision, reload.

    hermes-launch --listen :8080                  # the built-in demo worker
    hermes-launch --listen :8080 -- gunicorn app  # any server that takes systemd sockets

Errors a user can cause end in one line on stderr and exit status 2, with
nothing left behind; a crash loop ends in exit status 1.
"""

import argparse
import grp
import json
import logging
import os
import pwd
import shutil
import sys

from .. import __version__, control
from ..state import DEFAULTS
from .observe import DEFAULT_INTERVAL_MS

EXIT_FAIL = 1
EXIT_USAGE = 2
log = logging.getLogger("hermes-launch")


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(EXIT_USAGE, "%s: %s\n" % (self.prog, message))


def _positive(kind):
    def conv(text):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError("%r is not a number" % text) from None
        if v < 0:
            raise argparse.ArgumentTypeError("%r must not be negative" % text)
        return v
    return conv


def build_parser():
    p = _Parser(prog="hermes-launch",
                usage="%(prog)s [OPTIONS] [-- COMMAND [ARGS...]]",
                description="Run N workers on shared listening sockets, with Hermes "
                "load- and hang-aware dispatch. Without COMMAND, runs the built-in demo "
                "HTTP worker. COMMAND gets its sockets as systemd socket activation "
                "passes them (LISTEN_FDS from fd 3).")
    p.add_argument("--listen", metavar="ADDR", action="append", default=[],
                   help="address to listen on: HOST:PORT, [V6]:PORT or :PORT (repeatable; "
                   "required)")
    p.add_argument("--workers", metavar="N", type=_positive(int), default=os.cpu_count() or 1,
                   help="number of workers (default: CPUs, %(default)s here)")
    p.add_argument("--name", default="default",
                   help="instance name: the control socket /run/hermes/NAME.sock and pins "
                   "under /sys/fs/bpf/hermes/NAME (default: %(default)s)")
    p.add_argument("--dispatch", choices=("hermes", "reuseport", "exclusive"), default="hermes",
                   help="hermes (default); reuseport: a listener per worker, kernel hash; "
                   "exclusive: one shared listener, EPOLLEXCLUSIVE")
    p.add_argument("--hang-threshold", metavar="MS", type=_positive(float),
                   default=DEFAULTS["hang_threshold_ms"],
                   help="a worker busy longer than this gets no new connections "
                   "(default: %(default)s)")
    p.add_argument("--theta", metavar="X", type=_positive(float), default=DEFAULTS["theta"],
                   help="load spread allowed above the average, as a fraction of it "
                   "(default: %(default)s)")
    p.add_argument("--stale-limit", metavar="MS", type=_positive(float),
                   default=DEFAULTS["stale_limit_ms"],
                   help="ignore a bitmap no scheduler refreshed for this long "
                   "(default: %(default)s)")
    p.add_argument("--observe", choices=("auto", "off"), default="auto",
                   help="auto (default): a worker that does not attach the SDK within a "
                   "second is observed from outside (/proc, its accept queue) and published "
                   "for it; off: only SDK workers publish state")
    p.add_argument("--observe-interval", metavar="MS", type=_positive(float),
                   default=DEFAULT_INTERVAL_MS,
                   help="how often observed workers are sampled (default: %(default)s)")
    p.add_argument("--kill-timeout", metavar="S", type=_positive(float), default=0,
                   help="replace a worker busy longer than this; 0 = never (default)")
    p.add_argument("--graceful-timeout", metavar="S", type=_positive(float), default=30,
                   help="how long a stopping worker may finish its connections "
                   "(default: %(default)s)")
    p.add_argument("--reload-all", action="store_true",
                   help="on HUP replace all workers at once instead of one at a time")
    p.add_argument("--backlog", metavar="N", type=_positive(int), default=1024,
                   help="listen backlog per socket (default: %(default)s)")
    p.add_argument("--user", help="run workers as this user")
    p.add_argument("--group", help="run workers as this group")
    p.add_argument("--pidfile", metavar="PATH", help="write the launcher's pid here")
    p.add_argument("--log-file", metavar="PATH", help="log here instead of stderr "
                   "(reopened on USR1)")
    p.add_argument("--log-level", default="info",
                   choices=("debug", "info", "warning", "error"),
                   help="default: %(default)s")
    p.add_argument("--obj", metavar="PATH", help=argparse.SUPPRESS)
    # Behave as on a kernel before 5.14 (no sk_reuseport/migrate): for tests.
    p.add_argument("--no-migrate", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--version", action="version", version="hermes-launch " + __version__)
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND",
                   help="the worker command (after --)")
    return p


class Config:
    """The parsed, checked command line."""

    def __init__(self, args, argv=()):
        from .sockets import AddressError, parse_address
        self.argv = list(argv)          # for USR2's re-exec
        if not args.listen:
            raise ValueError("--listen is required (e.g. --listen :8080)")
        try:
            self.listen = [parse_address(a) for a in args.listen]
        except AddressError as e:
            raise ValueError(str(e)) from None
        self.name = control.check_name(args.name)
        self.workers = args.workers
        if self.workers < 1:
            raise ValueError("--workers must be at least 1")
        self.dispatch = args.dispatch
        self.policy = {"hang_threshold_ms": args.hang_threshold, "theta": args.theta,
                       "stale_limit_ms": args.stale_limit}
        if args.hang_threshold <= 0 or args.stale_limit <= 0:
            raise ValueError("--hang-threshold and --stale-limit must be > 0")
        self.observe = args.observe
        self.observe_interval = args.observe_interval
        if self.observe_interval <= 0:
            raise ValueError("--observe-interval must be > 0")
        self.kill_timeout = args.kill_timeout
        self.graceful_timeout = args.graceful_timeout
        self.reload_all = args.reload_all
        self.backlog = args.backlog
        self.pidfile = args.pidfile
        self.obj = args.obj
        self.migrate = False if args.no_migrate else None
        self.log_file = args.log_file
        cmd = args.command
        if cmd and cmd[0] == "--":
            cmd = cmd[1:]
        if cmd and not shutil.which(cmd[0]):
            raise ValueError("%s: command not found" % cmd[0])
        self.command = cmd
        self.user = self._user(args.user, args.group)

    @staticmethod
    def _user(user, group):
        if not user and not group:
            return None
        try:
            pw = pwd.getpwnam(user) if user else pwd.getpwuid(os.getuid())
        except KeyError:
            raise ValueError("--user %s: no such user" % user) from None
        gid = pw.pw_gid
        if group:
            try:
                gid = grp.getgrnam(group).gr_gid
            except KeyError:
                raise ValueError("--group %s: no such group" % group) from None
        if os.getuid() != 0 and (pw.pw_uid != os.getuid() or gid != os.getgid()):
            raise ValueError("--user/--group need root")
        return pw.pw_uid, gid

    def reopen_logs(self):
        setup_logging(self.log_file, logging.getLogger().level)


def setup_logging(path, level):
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
        h.close()
    h = logging.FileHandler(path) if path else logging.StreamHandler(sys.stderr)
    h.setFormatter(logging.Formatter("%(asctime)s hermes-launch[%(process)d] %(levelname)s "
                                     "%(message)s"))
    root.addHandler(h)
    root.setLevel(level)


def main(argv=None):
    from ..bpf import BPFError
    from ..layout import LayoutError
    from .arbiter import Arbiter, Fatal, LaunchError
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    upgrade = os.environ.pop("HERMES_UPGRADE", None)
    try:
        cfg = Config(args, argv)
        setup_logging(args.log_file, args.log_level.upper())
    except (ValueError, OSError) as e:
        print("hermes-launch: %s" % e, file=sys.stderr)
        return EXIT_USAGE
    arb = Arbiter(cfg)
    try:
        if upgrade:
            try:
                arb.adopt(json.loads(upgrade))
            except (BPFError, LayoutError, OSError, ValueError, KeyError) as e:
                raise Fatal("USR2: cannot take over from the previous launcher: %s" % e) from None
        else:
            arb.setup()
        return arb.run()
    except LaunchError as e:
        print("hermes-launch: %s" % e, file=sys.stderr)
        return EXIT_USAGE
    except Fatal as e:
        log.error("%s", e)
        print("hermes-launch: %s" % e, file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        return EXIT_FAIL
    finally:
        arb.cleanup()
