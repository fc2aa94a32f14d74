"""`hermesctl bpf load|inspect`: the loader from the command line."""

import json
import os
import sys

from . import EXIT_FAIL, EXIT_USAGE, UsageError


def register(sub):
    p = sub.add_parser("bpf", help="load or inspect a BPF object",
                       description="Load or inspect a compiled BPF object (CO-RE ELF).")
    bsub = p.add_subparsers(dest="bpf_command", metavar="SUBCOMMAND",
                            parser_class=type(p))
    bsub.required = True

    lp = bsub.add_parser("load", help="load every program and map of OBJ and pin them",
                         description="Load every program and map of OBJ, pin each program at "
                         "DIR/<function> and each map at DIR/maps/<map> (like `bpftool prog "
                         "loadall OBJ DIR pinmaps DIR/maps`).")
    lp.add_argument("obj", metavar="OBJ", help="compiled BPF object (.bpf.o)")
    lp.add_argument("--pin", metavar="DIR", required=True, help="bpffs directory to pin into")
    lp.add_argument("--set", metavar="NAME=VALUE", action="append", default=[],
                    help="set a global (const volatile) variable before loading; repeatable")
    lp.set_defaults(func=cmd_load)

    ip = bsub.add_parser("inspect", help="show programs, maps and globals of OBJ (no root)",
                         description="Show the programs, maps and global variables of OBJ.")
    ip.add_argument("obj", metavar="OBJ", help="compiled BPF object (.bpf.o)")
    ip.add_argument("--json", action="store_true", help="machine-readable output")
    ip.set_defaults(func=cmd_inspect)

    fp = bsub.add_parser("features", help="which kernel features Hermes uses are here",
                         description="Probe the running kernel for each feature Hermes uses "
                         "(root), or with --table print which Debian kernels have each, "
                         "from the features' minimum Linux versions (no probing).")
    fp.add_argument("--table", action="store_true",
                    help="Markdown table of the supported kernels (for the README)")
    fp.add_argument("--kernels", metavar="X.Y,...", default="5.10,6.1,6.12",
                    help="kernel releases for --table (default: %(default)s)")
    fp.set_defaults(func=cmd_features)


def _spec(path):
    from hermes.bpf import ParseError, load_spec
    if not os.path.exists(path):
        raise UsageError("%s: no such file" % path)
    try:
        return load_spec(path)
    except ParseError as e:
        raise UsageError(_one_line(e)) from None


def _one_line(e):
    return " ".join(str(e).split("\n", 1)[0].split())


def cmd_load(args):
    from hermes.bpf import BPFError, ParseError, VerifierError, load_collection, pin
    spec = _spec(args.obj)
    for item in args.set:
        name, eq, value = item.partition("=")
        if not eq or not name:
            raise UsageError("--set %s: expected NAME=VALUE" % item)
        try:
            spec.set_variable(name, value)
        except ParseError as e:
            raise UsageError(_one_line(e)) from None
    if os.path.exists(args.pin) and not os.path.isdir(args.pin):
        raise UsageError("%s: not a directory" % args.pin)
    try:
        pin.ensure_bpffs()
        with load_collection(spec) as coll:
            coll.pin(args.pin)
    except VerifierError as e:
        print("hermesctl: %s: %s" % (args.obj, e), file=sys.stderr)
        return EXIT_FAIL
    except BPFError as e:
        print("hermesctl: %s: %s" % (args.obj, _one_line(e)), file=sys.stderr)
        return EXIT_USAGE if isinstance(e, ParseError) else EXIT_FAIL
    return 0


def cmd_features(args):
    from hermes.bpf import BPFError, features
    if args.table:
        kernels = [k.strip() for k in args.kernels.split(",") if k.strip()]
        if not all(k.replace(".", "").isdigit() for k in kernels):
            raise UsageError("--kernels %s: expected releases like 5.10,6.1" % args.kernels)
        print("| Feature | Since | %s | Without it |" % " | ".join("Linux " + k for k in kernels))
        print("|---|---|%s---|" % ("---|" * len(kernels)))
        for name, since, have, without in features.table(kernels):
            cells = " | ".join("yes" if have[k] else "**no**" for k in kernels)
            print("| %s | %s | %s | %s |" % (name, since, cells, without))
        return 0
    status = 0
    for f in features.FEATURES:
        try:
            verdict = "yes" if f.supported() else "not supported: needs Linux " + f.version
        except BPFError as e:
            verdict, status = "probe failed: " + _one_line(e), EXIT_FAIL
        print("%-24s %-5s %s" % (f.name, f.version, verdict))
    return status


def _names(prefix):
    from hermes.bpf import sys as bsys
    return {v: k[len(prefix):].lower() for k, v in vars(bsys).items()
            if k.startswith(prefix) and isinstance(v, int)}


def describe(spec):
    """The object as plain data (what `inspect --json` prints)."""
    ptypes, mtypes = _names("BPF_PROG_TYPE_"), _names("BPF_MAP_TYPE_")
    from hermes.bpf import sys as bsys
    atypes = {v: k[4:].lower() for v, k in bsys.ATTACH_NAMES.items()}
    progs = [{
        "name": p.name, "section": p.section, "type": ptypes.get(p.type, p.type),
        "attach_type": (None if p.expected_attach_type is None
                        else atypes.get(p.expected_attach_type, p.expected_attach_type)),
        "insns": p.insn_count,
    } for p in spec.programs.values()]
    maps = [{
        "name": m.name, "type": mtypes.get(m.type, m.type), "key_size": m.key_size,
        "value_size": m.value_size, "max_entries": m.max_entries, "flags": m.flags,
        "pinning": "by_name" if m.pinning else None,
    } for m in spec.maps.values()]
    globs = []
    for v in spec.variables.values():
        globs.append({"name": v.name, "section": v.section, "size": v.size,
                      "type": _type_name(spec.btf, v.type_id),
                      "value": spec.variable_value(v.name)})
    return {"programs": progs, "maps": maps, "globals": globs}


def _type_name(btf, tid):
    """A C-ish spelling of a BTF type, for display."""
    quals = []
    for _ in range(16):
        t = btf.types[tid]
        kind = type(t).__name__.lower()
        if kind in ("const", "volatile", "restrict"):
            quals.append(kind)
            tid = t.type
            continue
        if kind in ("struct", "union", "enum", "enum64"):
            name = "%s %s" % ("enum" if kind == "enum64" else kind, t.name or "(anon)")
        elif kind == "array":
            return " ".join(quals + ["%s[%d]" % (_type_name(btf, t.type), t.nelems)])
        elif kind == "ptr":
            name = _type_name(btf, t.type) + " *"
        else:
            name = t.name or kind
        return " ".join(quals + [name])
    return "?"


def cmd_inspect(args):
    d = describe(_spec(args.obj))
    if args.json:
        json.dump(d, sys.stdout, indent=2)
        print()
        return 0
    print("programs:")
    for p in d["programs"]:
        print("  %-24s %-22s %-14s %-26s %5d insns" % (
            p["name"], p["section"], p["type"], p["attach_type"] or "-", p["insns"]))
    print("maps:")
    for m in d["maps"]:
        print("  %-24s %-16s key %-4d value %-6d entries %-7d flags %#x%s" % (
            m["name"], m["type"], m["key_size"], m["value_size"], m["max_entries"],
            m["flags"], "  pinned by name" if m["pinning"] else ""))
    print("globals:")
    for g in d["globals"]:
        print("  %-24s %-10s %-28s = %s" % (g["name"], g["section"], g["type"], g["value"]))
    return 0

