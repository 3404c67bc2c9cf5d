# SPDX-License-Identifier: MIT
"""Test helpers: build the small C programs next to this file and run them as targets.

Targets get their own session (so a whole tree can be killed), stdout/stderr in a file (never the
runner's pipe) and are killed and reaped at the end.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from functools import cache
from pathlib import Path

HERE = Path(__file__).resolve().parent
BUILD = HERE.parents[1] / ".work" / "progs"
CFLAGS = ["-O2", "-Wall", "-pthread", "-ffixed-r15"]


@cache
def build(name: str) -> str:
    """Compile progs/<name>.c (cached by content) and return the binary's path."""
    src = HERE / f"{name}.c"
    h = hashlib.sha256(src.read_bytes() + (HERE / "checked.h").read_bytes() + " ".join(CFLAGS).encode())
    out = BUILD / f"{name}-{h.hexdigest()[:12]}"
    if not out.exists():
        BUILD.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(f".tmp{os.getpid()}")
        subprocess.run(["gcc", *CFLAGS, "-o", str(tmp), str(src)], check=True)
        tmp.rename(out)
    return str(out)


class Target:
    """A running test program."""

    def __init__(self, argv: list[str], stdin: int | None = None) -> None:
        self.out = tempfile.NamedTemporaryFile(prefix="spice-target-", suffix=".out", delete=False)  # noqa: SIM115
        self.fds: list[int] = []  # closed by kill()
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL if stdin is None else stdin,
                                     stdout=self.out, stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self.proc.pid
        self.started = time.monotonic()

    @classmethod
    def prog(cls, name: str, *args: str, stdin: int | None = None) -> Target:
        return cls([build(name), *args], stdin=stdin)

    @classmethod
    def python(cls, code: str, stdin: int | None = None) -> Target:
        return cls([sys.executable, "-c", code], stdin=stdin)

    def output(self) -> str:
        with open(self.out.name) as f:
            return f.read()

    def lines(self) -> list[str]:
        return self.output().splitlines()

    def wait_for(self, pattern: str, timeout: float = 5.0, count: int = 1) -> re.Match:
        """Wait until `pattern` matched `count` lines; returns the last match."""
        end = time.monotonic() + timeout
        while True:
            found = [m for m in (re.search(pattern, ln) for ln in self.lines()) if m]
            if len(found) >= count:
                return found[count - 1]
            if time.monotonic() > end:
                raise AssertionError(f"{pattern!r} not seen in output of {self.pid}: {self.output()[-2000:]!r}")
            if self.proc.poll() is not None and len(found) < count:
                time.sleep(0.01)
                if len([1 for ln in self.lines() if re.search(pattern, ln)]) < count:
                    raise AssertionError(f"{self.pid} exited ({self.proc.returncode}): {self.output()[-2000:]!r}")
            time.sleep(0.002)

    def wait(self, timeout: float = 10.0) -> int:
        return self.proc.wait(timeout)

    def kill(self) -> None:
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        os.unlink(self.out.name)
        for fd in self.fds:
            os.close(fd)
        self.fds = []

    def __enter__(self) -> Target:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


def state(pid: int) -> str:
    """The one-letter state from /proc/PID/stat ("X" when gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return "X"


def status_field(pid: int, name: str) -> str:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(name + ":"):
                return line.split(":", 1)[1].strip()
    raise KeyError(name)


def wait_state(pid: int, states: str, timeout: float = 5.0) -> str:
    end = time.monotonic() + timeout
    while True:
        s = state(pid)
        if s in states:
            return s
        if time.monotonic() > end:
            raise AssertionError(f"pid {pid} state {s}, wanted one of {states!r}")
        time.sleep(0.002)


def seize_stopped(pid: int) -> None:
    """PTRACE_SEIZE (TRACESYSGOOD) + PTRACE_INTERRUPT one task and wait for its stop."""
    from spice_criu.inject import stop_for_injection
    from spice_criu.linux import ptrace as pt

    pt.seize(pid, pt.O_TRACESYSGOOD)
    stop_for_injection(pid)


def maps_text(pid: int) -> str:
    with open(f"/proc/{pid}/maps") as f:
        return f.read()
