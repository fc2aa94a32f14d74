"""Starting one worker process: fork, hand over the sockets, drop privileges, exec.

Sockets are passed as systemd socket activation does (sd_listen_fds(3)):
LISTEN_FDS=N with the sockets at fds 3..3+N-1, LISTEN_PID the worker's own pid,
LISTEN_FDNAMES their names; plus the Hermes environment the SDK reads.
"""

import ctypes
import fcntl
import os
import signal
import sys

SD_LISTEN_FDS_START = 3
PR_SET_PDEATHSIG = 1            # linux/prctl.h
_libc = ctypes.CDLL(None, use_errno=True)


def spawn(argv, env, sockets, names, fd_env=None, user=None):
    """fork+exec argv with `sockets` at fds 3..; -> pid.

    fd_env={VAR: fd} passes more fds, each named by an environment variable;
    user=(uid, gid) drops privileges in the child before exec.
    """
    fds = [s.fileno() for s in sockets]
    parent = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    # Child: any failure from here is exit 127.
    try:
        # A worker must not outlive a launcher that was killed outright: it would
        # hold a slot and sockets nobody supervises.
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:      # it died before prctl took effect
            os._exit(1)
        child_env = dict(env)
        # Everything we pass moves above the 3..3+N range first, so no dup2 below
        # can clobber an fd that happens to sit there already.
        top = SD_LISTEN_FDS_START + len(fds)
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD, top) for fd in fds]
        for var, fd in (fd_env or {}).items():
            moved = fcntl.fcntl(fd, fcntl.F_DUPFD, top)
            os.set_inheritable(moved, True)
            child_env[var] = str(moved)
        for i, fd in enumerate(high):
            os.dup2(fd, SD_LISTEN_FDS_START + i, inheritable=True)
            os.close(fd)
        child_env.update(LISTEN_FDS=str(len(fds)), LISTEN_PID=str(os.getpid()),
                         LISTEN_FDNAMES=":".join(names))
        if user is not None:
            uid, gid = user
            if os.getuid() == 0:
                os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
        os.execvpe(argv[0], argv, child_env)
    except BaseException as e:   # noqa: BLE001 -- nothing may escape a forked child
        try:
            os.write(2, ("hermes-launch: worker: %s: %s\n" % (argv[0], e)).encode())
        finally:
            os._exit(127)


def demo_argv():
    """The built-in demo worker, run by this interpreter from this package."""
    return [sys.executable, "-m", "hermes.demo"]


def package_pythonpath(env):
    """PYTHONPATH that finds this hermes package (a source tree is not installed)."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    old = env.get("PYTHONPATH")
    return root + (os.pathsep + old if old else "")
