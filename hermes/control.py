"""The launcher's control socket: one JSON request line, one JSON reply line.

    request(name, "status")                     -> {"workers": [...], ...}
    request(name, "drain", id=3)                -> {"ok": true}
    request(name, "set", policy={"theta": 0.3}) -> {"ok": true, "policy": {...}}

A reply with "error" is a refusal the caller shows as one line.  The socket is
/run/hermes/NAME.sock (mode 0600, owned by the launcher's user); $HERMES_RUN_DIR
moves it (tests).
"""

import json
import os
import re
import socket

RUN_DIR = "/run/hermes"
PIN_ROOT = "/sys/fs/bpf/hermes"
NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
TIMEOUT_S = 5
MAX_LINE = 1 << 20


class ControlError(Exception):
    """No launcher answers, or it refused the request."""


def run_dir():
    return os.environ.get("HERMES_RUN_DIR", RUN_DIR)


def socket_path(name, directory=None):
    return os.path.join(directory or run_dir(), name + ".sock")


def check_name(name):
    if not NAME_RE.match(name or ""):
        raise ValueError("bad instance name %r: letters, digits, '_', '.', '-' (max 64)" % name)
    return name


def request(name, cmd, run_dir=None, **args):
    """Send one command to launcher `name` (its socket in run_dir, by default
    $HERMES_RUN_DIR or /run/hermes) and return the reply."""
    path = socket_path(check_name(name), run_dir)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(TIMEOUT_S)
    try:
        try:
            s.connect(path)
        except FileNotFoundError:
            raise ControlError("no Hermes launcher named %r is running (no %s)"
                               % (name, path)) from None
        except PermissionError:
            raise ControlError("%s: permission denied (run as the launcher's user or root)"
                               % path) from None
        except ConnectionRefusedError:
            raise ControlError("launcher %r is not running (stale %s)" % (name, path)) from None
        s.sendall(json.dumps(dict(args, cmd=cmd)).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
            if len(buf) > MAX_LINE:
                raise ControlError("reply too long")
    except socket.timeout:
        raise ControlError("launcher %r did not answer in %d s" % (name, TIMEOUT_S)) from None
    except OSError as e:
        raise ControlError("%s: %s" % (path, e.strerror or e)) from None
    finally:
        s.close()
    try:
        reply = json.loads(buf)
    except ValueError:
        raise ControlError("launcher %r sent a malformed reply" % name) from None
    if "error" in reply:
        raise ControlError(reply["error"])
    return reply
