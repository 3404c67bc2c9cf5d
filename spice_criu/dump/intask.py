# SPDX-License-Identifier: MIT
"""The state only a thread can report, asked in one go: each collector adds its read-only syscalls
(and the scratch buffers they fill) to a Batch, which runs them with a single Remote.queries() (one
resumption of the thread instead of two ptrace stops per syscall); the collectors then read their
results from it."""

from __future__ import annotations

from ..inject import Remote
from ..linux.syscalls import raise_errno

#: scratch area of the dump's Remote: the lower half holds the buffers, the upper half the call table
SCRATCH_SIZE = 8 * 4096


class Batch:
    """Read-only syscalls and their output buffers in the thread's scratch area."""

    def __init__(self, r: Remote) -> None:
        self.r = r
        self.calls: list[tuple[int, ...]] = []
        self.used = 0
        self.results: list[int] = []
        self.raw = b""

    def buffer(self, size: int) -> int:
        """The address (in the thread) of `size` bytes of scratch for a call to write to."""
        addr = self.r.scratch + self.used
        self.used += (size + 7) & ~7
        if self.used > self.r.scratch_size // 2:
            raise ValueError(f"in-task buffers need {self.used} bytes, more than half the scratch area")
        return addr

    def call(self, nr: int, *args: int) -> int:
        """Add a syscall; returns its index for result()."""
        self.calls.append((nr, *args))
        return len(self.calls) - 1

    def run(self) -> None:
        self.results = self.r.queries(self.calls)
        self.raw = self.r.read(self.r.scratch, self.used) if self.used else b""

    def result(self, i: int) -> int:
        """The raw result of call i (-errno on failure)."""
        return self.results[i]

    def check(self, i: int) -> int:
        """The result of call i; OSError(errno) if it failed (as Remote.check raises)."""
        ret = self.results[i]
        if -4096 < ret < 0:
            raise_errno(f"remote syscall {self.calls[i][0]} in {self.r.tid}", -ret)
        return ret

    def bytes(self, addr: int, size: int) -> bytes:
        """What the calls wrote to the buffer at addr."""
        off = addr - self.r.scratch
        return self.raw[off : off + size]
