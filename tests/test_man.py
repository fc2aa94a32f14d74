"""The man pages in man/ stay well-formed and in step with the commands.

Each page renders without a warning from man-db (`man --warnings`) and, where
installed, mandoc's linter.  The options are taken from the commands' own
--help: every long option of hermes-launch and of each hermesctl (sub)command is
documented as a tagged paragraph (.TP) in its page's section, and every option
tagged there exists; hermesctl's subcommands and the page's COMMANDS subsections
are the same set.
"""

import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAN = os.path.join(ROOT, "man")
PAGES = ("hermes.7", "hermes-launch.8", "hermesctl.8", "hermes.conf.5")
REQUIRE = os.environ.get("HERMES_REQUIRE_BPF") == "1"
OPTION = re.compile(r"--[a-z0-9]+(?:-[a-z0-9]+)*")


def need(tool):
    if not shutil.which(tool):
        why = "%s is not installed (make deps)" % tool
        if REQUIRE:
            pytest.fail("HERMES_REQUIRE_BPF=1 but " + why, pytrace=False)
        pytest.skip(why)


# --- the commands' side ------------------------------------------------------------------
def help_text(module, *args):
    r = subprocess.run([sys.executable, "-m", module, *args, "--help"], cwd=ROOT,
                       capture_output=True, text=True, timeout=30,
                       env=dict(os.environ, COLUMNS="100"))
    assert r.returncode == 0, r.stderr
    return r.stdout


def help_options(text):
    """Long options of an argparse --help: the invocation part of each option line."""
    opts = set()
    for line in text.splitlines():
        if re.match(r"^  -", line):
            opts.update(OPTION.findall(re.split(r"\s{2,}", line.strip())[0]))
    return opts


def help_subcommands(text):
    """Subcommand names: the 4-space-indented entries under positional arguments."""
    names, inside = [], False
    for line in text.splitlines():
        if line.endswith(":") and not line.startswith(" "):
            inside = line == "positional arguments:"
        elif inside:
            m = re.match(r"^    ([a-z][a-z0-9-]*)(\s|$)", line)
            if m:
                names.append(m.group(1))
    return names


def ctl_commands(path=()):
    """{"status": options, "bpf load": options, ...} for every leaf command."""
    out = {}
    for name in help_subcommands(help_text("hermes.ctl", *path)):
        sub = path + (name,)
        text = help_text("hermes.ctl", *sub)
        if help_subcommands(text):
            out.update(ctl_commands(sub))
        else:
            out[" ".join(sub)] = help_options(text)
    return out


# --- the pages' side ---------------------------------------------------------------------
def read(page):
    with open(os.path.join(MAN, page)) as f:
        return f.read()


def sections(src, macro):
    """{title: body} of the .SH (or .SS) sections of roff source."""
    out, title = {}, None
    for line in src.splitlines():
        m = re.match(r"^\.%s\s+\"?(.*?)\"?\s*$" % macro, line)
        if m:
            title = m.group(1).replace("\\-", "-")
            out[title] = []
        elif macro == "SS" and line.startswith(".SH"):
            title = None
        elif title is not None:
            out[title].append(line)
    return {t: "\n".join(body) for t, body in out.items()}


def tagged_options(body):
    """Long options in the tags of .TP paragraphs (the line after each .TP)."""
    lines = body.splitlines()
    opts = set()
    for i, line in enumerate(lines[:-1]):
        if line.strip() == ".TP":
            opts.update(OPTION.findall(lines[i + 1].replace("\\-", "-")))
    return opts


# --- the tests ---------------------------------------------------------------------------
@pytest.mark.parametrize("page", PAGES)
def test_man_renders_without_warnings(page):
    need("man")
    r = subprocess.run(["man", "--warnings", "-E", "UTF-8", "-l", os.path.join(MAN, page)],
                       capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, MANWIDTH="80", LC_ALL="C.UTF-8"))
    assert r.returncode == 0 and r.stderr == "", r.stderr
    name, section = page.rsplit(".", 1)
    assert r.stdout.count("\n") > 20
    assert re.search(r"^\.TH %s %s " % (re.escape(name.upper().replace("-", "\\-")), section),
                     read(page), re.M), "bad .TH line in " + page


@pytest.mark.parametrize("page", PAGES)
def test_mandoc_lint(page):
    need("mandoc")
    r = subprocess.run(["mandoc", "-Tlint", os.path.join(MAN, page)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and r.stdout + r.stderr == "", r.stdout + r.stderr


def test_hermes_launch_options_match_help():
    have = help_options(help_text("hermes.launch"))
    assert {"--listen", "--workers", "--name", "--dispatch"} <= have   # the parser is sane
    documented = tagged_options(sections(read("hermes-launch.8"), "SH")["OPTIONS"])
    assert have - documented == set(), "in --help, not in hermes-launch.8 OPTIONS"
    assert documented - have == set(), "in hermes-launch.8 OPTIONS, not in --help"


def test_hermesctl_commands_and_options_match_help():
    src = read("hermesctl.8")
    top = help_options(help_text("hermes.ctl"))
    common = tagged_options(sections(src, "SH")["OPTIONS"])
    assert top == common, "hermesctl --help vs hermesctl.8 OPTIONS"

    commands = ctl_commands()
    assert {"status", "top", "metrics", "drain", "resume", "set", "bpf load",
            "bpf inspect"} <= set(commands)
    subsections = sections(sections(src, "SH")["COMMANDS"] + "\n", "SS")
    assert set(subsections) == set(commands), "subcommands vs hermesctl.8 COMMANDS"
    for cmd, have in commands.items():
        documented = tagged_options(subsections[cmd])
        # Options every command takes (-h, --name) are documented once, in OPTIONS.
        assert have - documented - common == set(), "hermesctl %s: not in its page" % cmd
        assert documented - have == set(), "hermesctl %s: not in its --help" % cmd


def test_environment_documented():
    """The variables a worker gets are described where a worker's author looks."""
    from hermes import state
    names = {v for k, v in vars(state).items() if k.startswith("ENV_")}
    names |= {"HERMES_WORKER_ID", "HERMES_DISPATCH", "HERMES_GRACEFUL_TIMEOUT",
              "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"}
    launch = sections(read("hermes-launch.8"), "SH")["ENVIRONMENT"]
    overview = read("hermes.7")
    for n in sorted(names):
        assert n in launch, "%s not in hermes-launch.8 ENVIRONMENT" % n
        assert n in overview, "%s not in hermes.7" % n
    signals = sections(read("hermes-launch.8"), "SH")["SIGNALS"]
    for sig in ("TERM", "INT", "QUIT", "HUP", "TTIN", "TTOU", "USR1"):
        assert re.search(r"\b%s\b" % sig, signals), sig
