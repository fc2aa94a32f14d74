"""The kernel feature probes agree with the Linux versions they cite.

On Debian's kernels (what tests/kernels/run boots) nothing is backported, so a
probe must say "yes" exactly from its feature's minimum version on: a wrong
version in the table, or a probe that answers for the wrong reason, fails here.
"""

import subprocess
import sys

import pytest

from hermes.bpf import NotSupported, features


def _v(version):
    return tuple(int(x) for x in version.split("."))


@pytest.mark.parametrize("feature", features.FEATURES, ids=lambda f: f.name)
def test_probe_matches_the_cited_version(bpf, feature):
    expected = features.kernel_release()[:2] >= _v(feature.version)
    assert feature.supported() is expected, "%s: probe says %s on Linux %s" % (
        feature.name, feature.supported(), ".".join(map(str, features.kernel_release())))
    if expected:
        feature.require()
    else:
        with pytest.raises(NotSupported) as e:
            feature.require()
        assert str(e.value) == "%s: not supported: needs Linux %s" % (
            feature.name, feature.version)


def test_features_are_ordered_by_version():
    versions = [_v(f.version) for f in features.FEATURES]
    assert versions == sorted(versions)
    assert len(features.BY_NAME) == len(features.FEATURES)


def test_table_follows_the_minimum_versions():
    rows = {name: have for name, _, have, _ in features.table(("5.10", "5.14", "6.1"))}
    assert rows["sk_reuseport/migrate"] == {"5.10": False, "5.14": True, "6.1": True}
    assert rows["BTF ENUM64"] == {"5.10": False, "5.14": False, "6.1": True}
    assert rows["mmapable arrays"] == {"5.10": True, "5.14": True, "6.1": True}


def test_cli_table():
    r = subprocess.run([sys.executable, "-m", "hermes.ctl", "bpf", "features", "--table",
                        "--kernels", "5.10,6.1"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "| Feature | Since | Linux 5.10 | Linux 6.1 | Without it |"
    assert len(lines) == 2 + len(features.FEATURES)
    assert "| sk_reuseport/migrate | 5.14 | **no** | yes |" in r.stdout
    bad = subprocess.run([sys.executable, "-m", "hermes.ctl", "bpf", "features", "--table",
                          "--kernels", "five"], capture_output=True, text=True)
    assert bad.returncode == 2 and "expected releases" in bad.stderr


def test_cli_probes_the_running_kernel(bpf):
    r = subprocess.run([sys.executable, "-m", "hermes.ctl", "bpf", "features"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for f in features.FEATURES:
        line = next(l for l in r.stdout.splitlines() if l.startswith(f.name + " "))
        assert line.endswith("yes" if f.supported() else "needs Linux " + f.version)
