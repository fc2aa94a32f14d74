"""`hermesctl drain|resume|set`: operator actions on a running pool.

drain ID takes a worker out of dispatch (its connections stay and are served);
resume ID puts it back; set KEY=VALUE ... changes the run-time policy.  The
launcher applies them to the shared state and answers with the outcome.
"""

import argparse
import math

from . import UsageError
from .status import call, policy_text

# Accepted spellings -> the policy key the launcher takes, and how to read its value.
_KEYS = {}
for _key, _names in (("hang_threshold_ms", ("hang_threshold_ms", "hang-threshold-ms",
                                            "hang_threshold", "hang-threshold")),
                     ("theta", ("theta",)),
                     ("stale_limit_ms", ("stale_limit_ms", "stale-limit-ms",
                                         "stale_limit", "stale-limit")),
                     ("group_mode", ("group_mode", "group-mode"))):
    for _n in _names:
        _KEYS[_n] = _key


def register(sub):
    for cmd, verb in (("drain", "take worker ID out of dispatch (it keeps its connections)"),
                      ("resume", "put a drained worker ID back into dispatch")):
        p = sub.add_parser(cmd, help=verb, description=verb[0].upper() + verb[1:] + ".")
        p.add_argument("id", metavar="ID", type=_worker_id, help="worker id (see status)")
        p.set_defaults(func=cmd_drain_resume, op=cmd)

    p = sub.add_parser("set", help="change the run-time policy",
                       description="Change the run-time policy of a running pool. Keys: "
                       "hang_threshold_ms (or hang-threshold), theta, stale_limit_ms "
                       "(or stale-limit), group_mode.")
    p.add_argument("pairs", metavar="KEY=VALUE", nargs="+")
    p.set_defaults(func=cmd_set)


def _worker_id(text):
    if not text.isdigit():
        raise argparse.ArgumentTypeError("not a worker id: %r" % text)
    return int(text)


def cmd_drain_resume(args):
    call(args.name, args.op, id=args.id)
    print("worker %d: %s" % (args.id, "draining" if args.op == "drain" else "resumed"))
    return 0


def parse_policy(pairs):
    """{"hang_threshold_ms": 250.0, ...} from KEY=VALUE strings; UsageError if invalid."""
    policy = {}
    for pair in pairs:
        name, eq, raw = pair.partition("=")
        key = _KEYS.get(name.strip().lower())
        if not eq or key is None:
            raise UsageError("set %s: expected KEY=VALUE with KEY one of hang_threshold_ms, "
                             "theta, stale_limit_ms, group_mode" % pair)
        if key in policy:
            raise UsageError("set: %s given twice" % key)
        raw = raw.strip()
        if key == "group_mode":
            if not raw:
                raise UsageError("set group_mode: empty value")
            policy[key] = raw
            continue
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if key == "theta":
            ok = 0 <= value <= 100
        else:
            ok = 0 < value < math.inf
        if not ok:
            raise UsageError("set %s=%s: expected %s" % (
                key, raw, "a number within 0..100" if key == "theta" else "milliseconds > 0"))
        policy[key] = int(value) if value.is_integer() and key != "theta" else value
    return policy


def cmd_set(args):
    reply = call(args.name, "set", policy=parse_policy(args.pairs))
    print("policy: %s" % policy_text(reply.get("policy")))
    return 0
