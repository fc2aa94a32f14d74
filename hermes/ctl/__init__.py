"""hermesctl: control and inspection for Hermes.

Every user mistake ends in one line on stderr and exit status 2; a verifier
rejection prints the useful tail of its log and exits 1.
"""

import argparse
import sys

from .. import __version__

EXIT_FAIL = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """A mistake the user can fix: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(EXIT_USAGE, "%s: %s\n" % (self.prog, message))


def build_parser():
    from . import bpfcmd, metrics, ops, status, top
    p = _Parser(prog="hermesctl", description="Control and inspect Hermes dispatch.")
    p.add_argument("--version", action="version", version="hermesctl " + __version__)
    p.add_argument("--name", metavar="NAME", default="default",
                   help="the launcher instance to talk to (default: default)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    status.register(sub)
    top.register(sub)
    metrics.register(sub)
    ops.register(sub)
    bpfcmd.register(sub)
    for cmd in ("status", "top", "metrics", "drain", "resume", "set"):
        # `hermesctl status --name X` works as well as `hermesctl --name X status`.
        sub.choices[cmd].add_argument("--name", metavar="NAME", default=argparse.SUPPRESS,
                                      help="the launcher instance (default: default)")
    return p


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except UsageError as e:
        print("hermesctl: %s" % e, file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
