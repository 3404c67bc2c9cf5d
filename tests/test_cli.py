# SPDX-License-Identifier: MIT
"""The criu-compatible command line: the fast parser agrees with click on everything it accepts,
leaves everything else to click, and the CLI behaves like criu's (exit codes, one error line)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from spice_criu import cli

SAME = [
    ["restore", "-D", "/tmp/x", "-d"],
    ["-D", "/tmp/x", "restore", "--restore-detached", "--pidfile", "p", "-v4", "-o", "r.log"],
    ["dump", "-t", "123", "-D", "d", "--leave-running", "--no-leave-running", "-R", "--timeout", "5"],
    ["dump", "-t123", "-Dd", "-vvvv", "--tcp-established", "--ext-unix-sk", "--file-locks", "-j"],
    ["restore", "--inherit-fd", "fd[3]:pipe:[5]", "--inherit-fd", "fd[4]:x", "--backend", "kmod"],
    ["restore", "--backend=ptrace", "--images-dir=/a", "--work-dir", "/b", "-x=1", "--manage-cgroups"],
    ["restore", "--daemon", "-S", "--display-stats", "--record-working-set", "--record-timeout", "2.5"],
    ["check", "--feature", "uffd", "--no-default-config", "--all"],
    ["swrk", "3"],
    ["cpuinfo", "dump"],
    ["-V"],
    ["restore", "--", "-notanoption"],
    ["restore", "-v"],
    ["dump", "--ghost-limit", "2M", "--network-lock", "nftables", "--no-display-stats", "--log-pid"],
    ["dump", "-t", "1", "--tcp-established", "--skip-in-flight"],
]
LEFT_TO_CLICK = [
    [],
    ["-h"],
    ["restore", "--help"],
    ["restore", "--bogus"],
    ["restore", "-Rd"],
    ["dump", "-t", "notanumber"],
    ["restore", "--backend", "nope"],
    ["restore", "-D"],
    ["--display-stats=1", "restore"],
]


def _click_params(argv: list[str]) -> dict:
    ctx = cli.criu_command().make_context("spice", list(argv))
    return ctx.params


@pytest.mark.parametrize("argv", SAME, ids=lambda a: " ".join(a) or "-")
def test_fast_parser_agrees_with_click(argv: list[str]) -> None:
    fast = cli._fast_parse(argv)
    assert fast is not None
    assert fast == _click_params(argv)


@pytest.mark.parametrize("argv", LEFT_TO_CLICK, ids=lambda a: " ".join(a) or "-")
def test_unusual_input_goes_to_click(argv: list[str]) -> None:
    assert cli._fast_parse(argv) is None


def test_skip_in_flight_reaches_the_dump() -> None:
    assert cli._options(cli._fast_parse(["dump", "-t", "1", "--skip-in-flight"])).skip_in_flight
    assert not cli._options(cli._fast_parse(["dump", "-t", "1"])).skip_in_flight


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "spice_criu", *args], capture_output=True, text=True, timeout=60)


def test_version_and_usage_errors() -> None:
    v = _run("--version")
    assert v.returncode == 0 and v.stdout == "Version: 4.2.1\n"
    for args, needle in ((("restore", "--bogus"), "No such option"), (("bogus",), "unknown action"),
                         (("dump", "-D", "/tmp"), "pid not specified"), (("restore", "x", "y"), "excessive")):
        p = _run(*args)
        assert p.returncode == 1, (args, p)
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error (spice/") and needle in lines[0], (args, p.stderr)
    h = _run("--help")
    assert h.returncode == 0 and "--images-dir" in h.stdout and "--restore-detached" in h.stdout


def test_options_fast_path_does_not_import_click() -> None:
    code = ("import sys; from spice_criu import cli; kw = cli._fast_parse(['restore', '-D', '/x', '-d']); "
            "o = cli._options(kw); print(o.restore_detached, 'click' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "False"]
