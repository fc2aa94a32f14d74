"""What /proc says about a process: CPU time, RSS, open fds, children."""

import os

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid):
    with open("/proc/%d/stat" % pid, "rb") as f:
        data = f.read()
    # comm may hold spaces and parentheses: the fields start after the last ')'.
    return data[data.rindex(b")") + 2:].split()


def cpu_s(pid):
    """utime + stime in seconds, or None once the process is gone."""
    try:
        f = _stat_fields(pid)
    except (OSError, ValueError):
        return None
    return (int(f[11]) + int(f[12])) / CLK_TCK     # fields 14, 15 of proc(5)


def state(pid):
    try:
        return _stat_fields(pid)[0].decode()
    except (OSError, ValueError):
        return None


def rss_kib(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def fd_count(pid):
    try:
        return len(os.listdir("/proc/%d/fd" % pid))
    except OSError:
        return None


def socket_fds(pid):
    """How many of pid's fds are sockets (for a worker: listeners + connections)."""
    n = 0
    try:
        for fd in os.listdir("/proc/%d/fd" % pid):
            try:
                if os.readlink("/proc/%d/fd/%s" % (pid, fd)).startswith("socket:"):
                    n += 1
            except OSError:
                pass
    except OSError:
        return None
    return n


def children(pid):
    """Direct children of pid (a scan of /proc: there is no cheaper portable way)."""
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if int(_stat_fields(int(name))[1]) == pid:
                    out.append(int(name))
            except (OSError, ValueError, IndexError):
                pass
    return out


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return state(pid) not in (None, "Z")


def busy_s():
    """CPU seconds spent busy on all CPUs since boot (/proc/stat, idle and iowait out)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v[:8]) - v[3] - v[4]) / CLK_TCK
