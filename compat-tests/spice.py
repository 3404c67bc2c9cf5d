# SPDX-License-Identifier: MIT
"""Running spice itself from the compat tests: the `spice` CLI of this checkout, by full path."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from harness import log_tail, scaled

REPO = Path(__file__).resolve().parent.parent
_counter = itertools.count()


class SpiceFailed(AssertionError):
    def __init__(self, args: Sequence[str], rc: int, out: str, err: str, log: Path | None) -> None:
        tail = log_tail(log) if log and log.exists() else ""
        super().__init__(f"spice {' '.join(args)} -> exit {rc}\nstdout: {out}\nstderr: {err}\n{tail}")
        self.rc, self.stdout, self.stderr = rc, out, err


def spice_cmd() -> list[str]:
    """The `spice` console script of the venv running the tests (what users run), else -m."""
    script = Path(sys.executable).parent / "spice"
    return [str(script)] if script.exists() else [sys.executable, "-m", "spice_criu"]


#: standard modules neither `spice dump` nor `spice restore` has a use for, each costing ~1-3 ms of
#: start-up here (x20-40 in the TCG guest of the kmod tests): not even pulled in indirectly
SLOW_STDLIB = frozenset({"typing", "pathlib", "collections", "functools", "importlib", "warnings", "re", "enum",
                         "inspect", "dataclasses", "mmap", "array", "json", "uuid", "hashlib", "shlex", "signal",
                         "selectors", "socket"})


def spice_importtime(*args: str, timeout: float = 120) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run the `spice` console script (what users run: `-m` would add runpy's imports) under
    `python -X importtime`; returns the process and the modules it imported, in order."""
    script = Path(sys.executable).parent / "spice"
    assert script.exists(), f"{script}: the venv has no spice script (make setup)"
    p = subprocess.run([sys.executable, "-X", "importtime", str(script), *args], capture_output=True, text=True,
                       cwd=REPO, stdin=subprocess.DEVNULL, timeout=scaled(timeout))
    return p, [ln.split("|")[-1].strip() for ln in p.stderr.splitlines() if ln.startswith("import time:")]


def spice(*args: str, check: bool = True, timeout: float = 120,
          log: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run `spice ARGS` from the project's venv."""
    cmd = [*spice_cmd(), *args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=scaled(timeout), cwd=REPO,
                       stdin=subprocess.DEVNULL)
    if check and p.returncode != 0:
        raise SpiceFailed(args, p.returncode, p.stdout, p.stderr, log)
    return p


def assert_one_error(p: subprocess.CompletedProcess[str], where: str = "", *needles: str) -> str:
    """A spice command failed as the brief wants: exit 1, one `Error (spice/<where>): ...` line
    (any <where> if not given) holding every needle, no traceback. Returns that line."""
    assert p.returncode == 1, (p.returncode, p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error (spice/{where}{'): ' if where else ''}"), p.stderr
    assert "Traceback" not in p.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def spice_dumper(pid: int, images: Path, leave_running: bool) -> subprocess.CompletedProcess[str]:
    """`spice dump -t pid` into images (created), as harness.dump_workload calls a dumper."""
    images.mkdir(parents=True, exist_ok=True)
    return spice("dump", "-t", str(pid), "-D", str(images), "-v4", "-o", "dump.log",
                 *(["--leave-running"] if leave_running else []), log=images / "dump.log")


def spice_restore(images_dir: Path, *extra: str, backend: str = "ptrace") -> int:
    """`spice restore -d` of an image dir; returns the restored root pid (from --pidfile)."""
    n = next(_counter)
    log = images_dir / f"restore-spice-{os.getpid()}-{n}.log"
    pidfile = images_dir / f"restore-spice-{os.getpid()}-{n}.pid"
    spice("restore", "-D", str(images_dir), "-d", "-v4", "-o", log.name, "--pidfile", str(pidfile),
          "--backend", backend, *extra, log=log)
    return int(pidfile.read_text())
