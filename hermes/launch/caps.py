"""Which capabilities the launcher has, to say precisely what it lacks."""

# linux/capability.h
CAPS = {"CAP_DAC_OVERRIDE": 1, "CAP_KILL": 5, "CAP_SETGID": 6, "CAP_SETUID": 7,
        "CAP_NET_BIND_SERVICE": 10, "CAP_NET_ADMIN": 12, "CAP_SYS_PTRACE": 19,
        "CAP_SYS_ADMIN": 21, "CAP_BPF": 39}

# Loading and attaching the dispatcher: CAP_BPF (Linux 5.8; CAP_SYS_ADMIN before it)
# for BPF_PROG_LOAD and maps, CAP_NET_ADMIN for a networking program type.
FOR_DISPATCH = ("CAP_BPF", "CAP_NET_ADMIN")


def effective(path="/proc/self/status"):
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except OSError:
        pass
    return 0


def missing(names, eff=None):
    eff = effective() if eff is None else eff
    out = []
    for n in names:
        have = eff >> CAPS[n] & 1
        if n == "CAP_BPF" and not have:
            have = eff >> CAPS["CAP_SYS_ADMIN"] & 1
        if not have:
            out.append(n)
    return out
