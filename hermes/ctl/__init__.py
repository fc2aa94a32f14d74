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


# Each command's module registers its subparser(s).
COMMANDS = {"status": "status", "top": "top", "metrics": "metrics", "drain": "ops",
            "resume": "ops", "set": "ops", "bpf": "bpfcmd"}
_SERVER = ("status", "top", "metrics", "drain", "resume", "set")


def build_parser(only=None):
    """The whole parser, or with only=COMMAND just that command's part: building
    every subparser costs more than a `bpf load` of a small object (bench/loader)."""
    import importlib
    p = _Parser(prog="hermesctl", description="Control and inspect Hermes dispatch.")
    p.add_argument("--version", action="version", version="hermesctl " + __version__)
    p.add_argument("--name", metavar="NAME", default="default",
                   help="the launcher instance to talk to (default: default)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    modules = [COMMANDS[only]] if only in COMMANDS else \
        list(dict.fromkeys(COMMANDS.values()))
    for name in modules:
        importlib.import_module("." + name, __name__).register(sub)
    for cmd in _SERVER:
        if cmd in sub.choices:
            # `hermesctl status --name X` works as well as `hermesctl --name X status`.
            sub.choices[cmd].add_argument("--name", metavar="NAME", default=argparse.SUPPRESS,
                                          help="the launcher instance (default: default)")
    return p


def _command(argv):
    """The subcommand argv names, if it can tell without parsing: else None."""
    it = iter(argv)
    for a in it:
        if a in ("-h", "--help", "--version"):
            return None
        if a == "--name":
            next(it, None)
        elif not a.startswith("-"):
            return a
    return None


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(_command(argv)).parse_args(argv)
    try:
        return args.func(args) or 0
    except UsageError as e:
        print("hermesctl: %s" % e, file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
