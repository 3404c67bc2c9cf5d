# SPDX-License-Identifier: MIT
"""seccomp state: each thread's mode, and the filter chains of filtered threads (seccomp.img).

As CRIU's seccomp.c: every filter of a thread is fetched with PTRACE_SECCOMP_GET_FILTER (index 0 is
the newest) and its flags with PTRACE_SECCOMP_GET_METADATA; the image lists, thread by thread in tid
order, each chain oldest first, each filter pointing at the one before it (prev), and a thread's
core names its newest filter. When every thread of a process holds identical chains they are stored
once, on the leader, with SECCOMP_FILTER_FLAG_TSYNC (CRIU's try_use_tsync). The tree is seized with
PTRACE_O_SUSPEND_SECCOMP, so syscalls spice injects are not filtered.
"""

from __future__ import annotations

import ctypes
import errno

from ..errors import SpiceError
from ..images import codec
from ..images.lite import Message
from ..linux import ptrace as pt
from . import proc

MODE_DISABLED, MODE_STRICT, MODE_FILTER = 0, 1, 2
SECCOMP_FILTER_FLAG_TSYNC = 1


class _Meta(ctypes.Structure):
    _fields_ = [("filter_off", ctypes.c_uint64), ("flags", ctypes.c_uint64)]


def _chain(tid: int) -> list[tuple[bytes, int]]:
    """(filter program, flags) of the thread, newest first."""
    out = []
    i = 0
    while True:
        try:
            prog = pt.seccomp_get_filter(tid, i)
        except OSError as e:
            if e.errno == errno.ENOENT:
                return out
            raise SpiceError("dump", f"thread {tid}: can't fetch seccomp filter {i}: {e.strerror}") from None
        meta = _Meta(i, 0)
        try:
            pt.ptrace(pt.SECCOMP_GET_METADATA, tid, ctypes.sizeof(meta), ctypes.addressof(meta))
        except OSError as e:
            if e.errno != errno.EIO:
                raise SpiceError("dump", f"thread {tid}: seccomp metadata {i}: {e.strerror}") from None
        out.append((prog, meta.flags))
        i += 1


class Seccomp:
    """Modes and filter positions of every thread of the tree, and the seccomp.img entry."""

    def __init__(self) -> None:
        self.modes: dict[int, int] = {}
        self.position: dict[int, int] = {}
        self.entry: Message = codec.pb("seccomp_entry", lite=True)()

    def collect(self, tasks: list) -> None:
        chains: dict[int, list[tuple[bytes, int]]] = {}
        for t in tasks:
            if not t.stat or t.state == 2:  # TASK_DEAD
                continue
            for tid in t.tids:
                self.modes[tid] = int(proc.status(t.pid, tid).get("Seccomp", "0"))
                if self.modes[tid] == MODE_FILTER:
                    chains[tid] = _chain(tid)
            self._try_tsync(t.pid, t.tids, chains)
        pos = 0
        for tid in sorted(chains):
            chain = chains[tid]
            if not chain:
                continue
            first = pos
            for prog, flags in reversed(chain):  # oldest first
                f = self.entry.seccomp_filters.add(filter=prog, flags=flags)
                if pos != first:
                    f.prev = pos - 1
                pos += 1
            self.position[tid] = pos - 1

    def _try_tsync(self, pid: int, tids: list[int], chains: dict[int, list[tuple[bytes, int]]]) -> None:
        leader = chains.get(pid)
        if self.modes.get(pid) != MODE_FILTER or leader is None:
            return
        for tid in tids:
            if tid == pid:
                continue
            other = chains.get(tid)
            if self.modes.get(tid) != MODE_FILTER or other is None or len(other) != len(leader) or \
                    any(a[0] != b[0] for a, b in zip(leader, other, strict=True)):
                return
        chains[pid] = [(prog, flags | SECCOMP_FILTER_FLAG_TSYNC) for prog, flags in leader]
        for tid in tids:
            if tid != pid:
                self.modes[tid] = MODE_DISABLED
                chains.pop(tid, None)

    def fill(self, tid: int, thread_core: Message) -> None:
        mode = self.modes.get(tid, MODE_DISABLED)
        if mode != MODE_DISABLED:
            thread_core.seccomp_mode = mode
            if mode == MODE_FILTER:
                thread_core.seccomp_filter = self.position[tid]
