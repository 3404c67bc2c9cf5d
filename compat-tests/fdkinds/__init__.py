# SPDX-License-Identifier: MIT
"""Purpose-built workloads holding one family of fd kinds each, for the fd-kind compat tests.

They follow the harness conventions (``tick=N role=R pid=P token=T key=value`` lines appended to an
O_APPEND file, ``FAIL ...`` + exit 1 on any inconsistency, cwd = their run dir, stdio to files, a
new session) and are registered in ``harness.SPECS`` on import, so every harness helper
(``start_workload``, ``dump_workload``, ``assert_continues``...) works on them unchanged.

* ``evfds`` (C): eventfd, epoll over a pipe/eventfd/timerfd/signalfd/socket, timerfd, signalfd.
* ``tcppair`` (Python): an established loopback TCP connection between two processes of one tree.
* ``ttyjob`` (Python): a job whose stdio is the slave of a pty held by the test (--shell-job).
* ``inherit`` (Python): a task writing to a pipe whose read end the test holds (--inherit-fd).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import harness

HERE = Path(__file__).resolve().parent

_SPECS = (
    harness.WorkloadSpec("evfds", str(HERE / "evfds.c"), constants=("token", "eps", "tint"),
                         monotonic=("expirations", "sigs")),
    harness.WorkloadSpec("tcppair", str(HERE / "tcppair.py"), roles=("server", "client"),
                         constants=("token", "conn"), steps=("seq",)),
    harness.WorkloadSpec("ttyjob", str(HERE / "ttyjob.py"), constants=("token", "tty"), steps=("echo",)),
    harness.WorkloadSpec("inherit", str(HERE / "inherit.py"), constants=("token",), steps=("seq",)),
)
for _s in _SPECS:
    harness.SPECS.setdefault(_s.name, _s)


def wait_for(cond, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + harness.scaled(timeout)
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def last_field(info_or_wl, key: str, role: str = "main") -> int:
    """The value of key in the latest line of role in the workload's output."""
    lines, _ = harness.read_lines(info_or_wl.out_file)
    for ln in reversed(lines):
        if ln.role == role and not ln.failed and key in ln.fields:
            return int(ln.fields[key])
    raise AssertionError(f"no {key}= line from {role}")


def signal_and_wait(pid: int, out_file: Path, key: str = "sigs", timeout: float = 10.0) -> int:
    """Send SIGUSR1 to pid and wait until its lines count one more signal; returns the new count."""
    before = _latest(out_file, key)
    os.kill(pid, signal.SIGUSR1)
    wait_for(lambda: _latest(out_file, key) > before, timeout, f"{key} to grow past {before}")
    return _latest(out_file, key)


def _latest(out_file: Path, key: str) -> int:
    lines, _ = harness.read_lines(out_file)
    vals = [int(ln.fields[key]) for ln in lines if not ln.failed and key in ln.fields]
    return vals[-1] if vals else -1


def kill_quietly(pids) -> None:
    with contextlib.suppress(Exception):
        harness.kill_pids([p for p in pids if harness.is_running(p)])
