# SPDX-License-Identifier: MIT
"""What the fd-kind workloads share: their output lines and their clock (a step every ~100 ms).
A workload's own directory is on sys.path when it runs, so they import this by its name."""

from __future__ import annotations

import os
import time

TICK = 0.1


class Out:
    """The O_APPEND output file: ``tick=N role=R pid=P token=T seq=N key=value...`` lines, or a
    ``FAIL`` line and exit 1. The token (random unless given) is the same before and after a dump."""

    def __init__(self, path: str, role: str = "main", token: int | None = None) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self.role = role
        self.token = token if token is not None else int.from_bytes(os.urandom(8), "little") | 1

    def line(self, tick: int, **fields: object) -> None:
        extra = "".join(f" {k}={v}" for k, v in fields.items())
        os.write(self.fd, f"tick={tick} role={self.role} pid={os.getpid()} token={self.token:016x} "
                          f"seq={tick}{extra}\n".encode())

    def fail(self, why: str) -> None:
        os.write(self.fd, f"FAIL role={self.role} pid={os.getpid()} {why}\n".encode())
        os._exit(1)


def run(step) -> None:
    """Call step(tick) for tick = 1, 2, ... every TICK seconds, forever. After a pause of more than
    a second (a checkpoint, a restore) the clock restarts from now instead of catching up."""
    start = time.monotonic()
    tick = 0
    while True:
        tick += 1
        step(tick)
        delay = start + tick * TICK - time.monotonic()
        if delay < -1.0:
            start = time.monotonic() - tick * TICK
        elif delay > 0:
            time.sleep(delay)
