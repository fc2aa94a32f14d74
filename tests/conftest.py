"""Shared fixtures: built objects, and the privilege gate.

With HERMES_REQUIRE_BPF=1 (CI) a test that would skip for lack of root, BPF,
BTF or the build tools fails instead, so a green CI means the privileged tests ran.
"""

import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.path.join(ROOT, "build")
REQUIRE = os.environ.get("HERMES_REQUIRE_BPF") == "1"


def _gate(reason):
    if REQUIRE:
        pytest.fail("HERMES_REQUIRE_BPF=1 but " + reason, pytrace=False)
    pytest.skip(reason)


def _built(relpath):
    path = os.path.join(BUILD, relpath)
    if not os.path.exists(path):
        if not shutil.which("clang"):
            _gate("clang is not installed (make deps)")
        r = subprocess.run(["make", "-s", "-C", ROOT, os.path.relpath(path, ROOT)],
                           capture_output=True, text=True)
        if r.returncode:
            pytest.fail("make %s failed:\n%s" % (relpath, r.stderr), pytrace=False)
    return path


@pytest.fixture
def test_obj():
    """test_obj("globals") -> path of build/tests/globals.bpf.o, built if missing."""
    return lambda name: _built("tests/%s.bpf.o" % name)


@pytest.fixture
def hermes_obj():
    return _built("hermes.bpf.o")


def _bpf_unavailable():
    if os.geteuid() != 0:
        return "not root"
    if not os.path.exists("/sys/kernel/btf/vmlinux"):
        return "kernel has no BTF (/sys/kernel/btf/vmlinux)"
    return None


@pytest.fixture
def bpf():
    """Gate for tests that load into the kernel."""
    why = _bpf_unavailable()
    if why:
        _gate(why)


@pytest.fixture
def bpftool(bpf):
    if not shutil.which("bpftool"):
        _gate("bpftool is not installed (make deps)")
    return shutil.which("bpftool")


@pytest.fixture
def pin_dir(bpf):
    """A fresh directory under /sys/fs/bpf, removed with everything in it."""
    from hermes.bpf import pin
    pin.ensure_bpffs()
    d = "/sys/fs/bpf/hermes-test-%d-%s" % (os.getpid(), os.urandom(4).hex())
    os.mkdir(d)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def fds(bpf):
    """Asserts the test closed every fd it opened."""
    before = len(os.listdir("/proc/self/fd"))
    yield
    assert len(os.listdir("/proc/self/fd")) == before


@pytest.fixture
def launcher(bpf, tmp_path):
    """launcher(*args, workers=, dispatch=, command=) -> a running hermes-launch,
    ready; stopped (and its workers and pins removed) after the test."""
    from launchutil import reap, start
    made = []

    def make(*args, **kw):
        made.append(start(tmp_path, *args, **kw))
        return made[-1]
    yield make
    for lch in made:
        reap(lch)
