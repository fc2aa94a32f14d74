"""The Debian package end to end: build, lint, install, run, purge.

`make deb` builds build/deb/hermes_*.deb; lintian must report no error or
warning (debian/hermes.lintian-overrides holds the one justified override);
installed, its man pages are found, the C SDK compiles against the installed
headers and agrees with the installed object's layout, the installed
hermes-launch serves a request under Debian's /usr/bin/python3 alone
(debian/tests/smoke, the autopkgtest), and a purge leaves nothing behind.

Root and BPF are needed, and the packaging tools (`make deps` installs them);
with HERMES_REQUIRE_BPF=1 their absence fails instead of skipping.  Any hermes
package installed when the test starts is purged: it may be one a failed run left.
"""

import glob
import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEB_DIR = os.path.join(ROOT, "build", "deb")
TOOLS = ("dpkg-buildpackage", "dh", "dh_python3", "lintian", "man", "gcc", "apt-get")
APT = ["apt-get", "-y", "-q", "-o", "DPkg::Lock::Timeout=300"]
# The installed package must run without this tree or a pip-installed anything.
CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "HERMES_"))}
CLEAN_ENV["DEBIAN_FRONTEND"] = "noninteractive"

C_PROGRAM = r"""
#include <stdio.h>
#include <hermes/hermes.h>

int main(void)
{
	static struct hermes_worker hw;
	int r = hermes_attach_env(&hw);   /* not under Hermes: 0, hooks are no-ops */

	hermes_before_poll(&hw);
	hermes_after_poll(&hw, 1);
	printf("%d %llu\n", r, (unsigned long long)HERMES_LAYOUT);
	return 0;
}
"""


def run(argv, timeout=300, **kw):
    kw.setdefault("env", CLEAN_ENV)
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)


def installed():
    """Installed, or removed with its configuration left ("rc"): both need a purge."""
    r = run(["dpkg-query", "-W", "-f=${Status}", "hermes"])
    return r.returncode == 0 and "not-installed" not in r.stdout.split()


def purge():
    r = run(APT + ["purge", "hermes"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert not installed()


@pytest.fixture(scope="module")
def tools():
    missing = [t for t in TOOLS if not shutil.which(t)]
    if missing:
        why = "packaging tools missing: %s (make deps)" % " ".join(missing)
        if os.environ.get("HERMES_REQUIRE_BPF") == "1":
            pytest.fail("HERMES_REQUIRE_BPF=1 but " + why, pytrace=False)
        pytest.skip(why)


@pytest.fixture(scope="module")
def package(tools):
    r = run(["make", "-C", ROOT, "deb"], env=os.environ)
    assert r.returncode == 0, "make deb failed:\n" + (r.stdout + r.stderr)[-4000:]
    debs = glob.glob(os.path.join(DEB_DIR, "hermes_*.deb"))
    assert len(debs) == 1, debs
    return debs[0]


def deb_paths(deb):
    """Every path the .deb holds (dpkg-deb -c), as absolute paths."""
    out = run(["dpkg-deb", "-c", deb]).stdout
    paths = set()
    for line in out.splitlines():
        name = line.split(None, 5)[5].split(" -> ")[0]
        p = name.lstrip(".").rstrip("/")
        if p:
            paths.add(p)
    return paths


def test_package_metadata_and_lintian(package):
    info = run(["dpkg-deb", "-f", package, "Depends", "Architecture"]).stdout
    deps = info.split("\n", 1)[0]
    # Run time needs Python's standard library only: no clang, libbpf or bpftool.
    assert [d.split()[0] for d in deps.split(": ", 1)[1].split(", ")] == ["python3:any"], info
    r = run(["lintian", "--fail-on", "error,warning", package])
    tags = [ln for ln in r.stdout.splitlines() if ln[:2] in ("E:", "W:")]
    assert r.returncode == 0 and not tags, r.stdout + r.stderr


def test_install_run_purge(bpf, package, tmp_path):
    if installed():
        purge()
    paths = deb_paths(package)
    assert {"/usr/sbin/hermes-launch", "/usr/sbin/hermesctl", "/usr/lib/hermes/hermes.bpf.o",
            "/usr/include/hermes/hermes.h", "/usr/include/hermes/hermes_layout.h",
            "/lib/systemd/system/hermes@.service", "/etc/hermes/default.conf.example",
            "/usr/lib/python3/dist-packages/hermes/launch/__init__.py"} <= paths
    before = {p: os.path.lexists(p) for p in paths}
    run_dir_before = os.path.exists("/run/hermes")
    try:
        r = run(APT + ["install", os.path.abspath(package)])
        assert r.returncode == 0, r.stdout + r.stderr
        listed = set(run(["dpkg", "-L", "hermes"]).stdout.split()) - {"/."}
        assert paths <= listed, paths - listed

        for page in ("hermes-launch", "hermesctl", "hermes.conf", "hermes"):
            r = run(["man", "-w", page])
            assert r.returncode == 0 and r.stdout.startswith("/usr/share/man/"), (page, r)

        if shutil.which("systemd-analyze"):     # no running systemd needed
            r = run(["systemd-analyze", "verify", "/lib/systemd/system/hermes@.service"])
            assert r.returncode == 0 and not r.stderr.strip(), r.stderr

        # Debian's python3 finds the installed package, and the object's BTF survived
        # the build (layout and CO-RE need it).
        r = run(["/usr/bin/python3", "-c", "import hermes.layout as l; print(l.__file__); "
                 "print(l.Layout.load('/usr/lib/hermes/hermes.bpf.o').value)"], cwd="/")
        assert r.returncode == 0, r.stderr
        where, layout = r.stdout.split()
        assert where == "/usr/lib/python3/dist-packages/hermes/layout.py"
        r = run(["/usr/sbin/hermesctl", "bpf", "inspect", "/usr/lib/hermes/hermes.bpf.o"],
                cwd="/")
        assert r.returncode == 0 and "hermes_select" in r.stdout, r.stdout + r.stderr

        # The C SDK from /usr/include alone, and the same layout as the object.
        src = tmp_path / "sdk.c"
        src.write_text(C_PROGRAM)
        exe = str(tmp_path / "sdk")
        r = run(["gcc", "-std=gnu11", "-Wall", "-Wextra", "-Werror", str(src), "-o", exe])
        assert r.returncode == 0, r.stderr
        r = run([exe])
        assert r.returncode == 0 and r.stdout.split() == ["0", layout], r.stdout

        r = run(["/usr/bin/python3", os.path.join(ROOT, "debian", "tests", "smoke")], cwd="/",
                timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr

        purge()
        left = sorted(p for p in paths if os.path.lexists(p) and not before[p])
        assert not left, left
        assert run(["man", "-w", "hermes-launch"]).returncode != 0
        if not run_dir_before:
            assert not os.path.exists("/run/hermes")
    finally:
        if installed():
            purge()
