# SPDX-License-Identifier: MIT
"""Output protocol of the Python workloads (same as the C ones, see common.h).

One line per step, appended with a single write() to an O_APPEND file:
``tick=N role=R pid=P token=T key=value ...``; on an inconsistency ``FAIL role=R pid=P reason`` and
exit 1. Python retries syscalls interrupted by signals itself (PEP 475), which covers the EINTR a
restored process sees from the sleep it was dumped in.
"""

from __future__ import annotations

import os
import random
import sys


class Output:
    """The workload's output file and its identity (pid is read live on every line)."""

    def __init__(self, path: str, role: str = "main") -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self.role = role
        self.token = random.SystemRandom().getrandbits(64) | 1

    def line(self, tick: int, **fields: object) -> None:
        extra = " ".join(f"{k}={v}" for k, v in fields.items())
        text = f"tick={tick} role={self.role} pid={os.getpid()} token={self.token:016x} {extra}\n"
        os.write(self.fd, text.encode())

    def fail(self, reason: str) -> None:
        os.write(self.fd, f"FAIL role={self.role} pid={os.getpid()} {reason}\n".encode())
        sys.exit(1)
