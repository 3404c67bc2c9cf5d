# SPDX-License-Identifier: MIT
"""The restorer's grip on one task under construction: its threads (all ptrace-stopped), the
trampoline page it executes injected syscalls from, and scratch memory for syscall arguments.

Every restored task starts as the stub (stub.py), ptrace-stopped. The trampoline (one code page
holding `syscall; int3` plus scratch pages) is mapped where the task's dumped address space has a
hole, so it survives while the old address space is torn down and the new one is built; it is
the last mapping removed before the task resumes.

Pids: the plan keeps the pids of the images (TaskPlan.pid, ThreadPlan.tid: the tree's own pid
namespace's when it has one); what the task itself is asked to do (syscalls injected into it) uses
those. The restorer reaches tasks by their pids in its own namespace: TaskCtl.pid, host_tid(tid),
and PIDS (image pid -> ours, for whatever the restorer does itself: F_SETOWN, cgroup.procs, pidfile).
"""

from __future__ import annotations

import os
import struct

from ..errors import SpiceError
from ..inject import Remote
from ..linux.syscalls import NR
from ..vma import MAP_ANONYMOUS, MAP_FIXED_NOREPLACE, MAP_PRIVATE, PAGE_SIZE
from . import stub

TYPE_CHECKING = False  # typing costs ~10 ms of start-up; annotations are strings
if TYPE_CHECKING:
    from .plan import TaskPlan

TRAMPOLINE_CODE = bytes.fromhex("0f05cc")  # syscall; int3
SCRATCH_PAGES = 64
TRAMPOLINE_SIZE = PAGE_SIZE * (1 + SCRATCH_PAGES)
_LOW, _HIGH = 1 << 32, 1 << 46


def parse_maps(pid: int) -> list[tuple[int, int, str]]:
    """(start, end, name) of every mapping of a task."""
    out = []
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.split(maxsplit=5)
            lo, hi = parts[0].split("-")
            out.append((int(lo, 16), int(hi, 16), parts[5].strip() if len(parts) > 5 else ""))
    return out


def find_hole(avoid: list[tuple[int, int]], size: int) -> int:
    """The highest page-aligned address below 2^46 where [addr, addr+size) overlaps none of `avoid`."""
    spans = sorted((lo, hi) for lo, hi in avoid if hi > _LOW and lo < _HIGH)
    top = _HIGH
    for lo, hi in reversed(spans):
        if hi <= top - size:
            return top - size
        top = min(top, lo)
    if top - size >= _LOW:
        return top - size
    raise SpiceError("restore", "no room for the restorer trampoline in the task's address space")


def wait_first_stop(tid: int) -> None:
    """Wait until a task or thread we just created (traced from birth) sits in its first stop."""
    from ..linux import ptrace

    while True:
        st = ptrace.waitpid(tid)
        if st.gone:
            raise SpiceError("restore", f"task {tid} died while being created ({st})")
        if st.stopped:
            return


def _remote(tid: int, site: int, scratch: tuple[int, int] | None) -> Remote:
    return Remote(tid, site=site, scratch=scratch, scratch_size=0, restore_regs=False, rseq_fixup=False)


class PidMap:
    """The tree being restored: its pids as the images hold them -> ours. Without a pid namespace
    of the tree's own they are the same; with one, a pid outside the tree is none of ours (0)."""

    def __init__(self) -> None:
        self.own = False
        self._host: dict[int, int] = {}
        #: in a pid namespace of the tree's own, no task can name us (pidfd_open): the root inherits
        #: a pidfd of the restorer at this fd (above every fd of the images), closed in finish_task
        self.restorer_fd = -1

    def reset(self, own: bool) -> None:
        self.own = own
        self._host.clear()
        self.restorer_fd = -1

    def add(self, pid: int, host: int) -> None:
        self._host[pid] = host

    def host(self, pid: int) -> int:
        if not self.own or pid <= 0:
            return pid
        return self._host.get(pid, 0)


#: the tree restored now (one restore at a time per process: restore/tree.py create_tree resets it)
PIDS = PidMap()
F_DUPFD_CLOEXEC = 1030


def restorer_pidfd_call() -> tuple[int, ...]:
    """The syscall (nr, args) that gives a task a new pidfd of the restorer (for pidfd_getfd)."""
    if PIDS.restorer_fd < 0:
        return NR.pidfd_open, os.getpid(), 0
    return NR.fcntl, PIDS.restorer_fd, F_DUPFD_CLOEXEC, 0


class TaskCtl:
    """plan: the task as the images have it; pid: the task's pid in our namespace (ptrace, /proc);
    threads: keyed by the images' tids, each reached through its tid in our namespace."""

    def __init__(self, plan: TaskPlan, pid: int) -> None:
        self.plan = plan
        self.pid = pid
        self.remote = _remote(pid, stub.SYSCALL_SITE, None)  # the leader, still the stub
        self.threads: dict[int, Remote] = {plan.pid: self.remote}
        self._host: dict[int, int] = {plan.pid: pid}  # the images' tid -> ours
        PIDS.add(plan.pid, pid)
        self.tramp = 0
        self._scratch_used = 0

    def host_tid(self, tid: int) -> int:
        """Our tid of one of its threads, named by the images' tid."""
        return self._host[tid]

    def adopt_thread(self, tid: int, host: int | None = None) -> None:
        """A thread just created inside the task (stopped, auto-attached), tid as the task sees it,
        host: ours (the same without a pid namespace of the tree's): inject through it too."""
        host = tid if host is None else host
        wait_first_stop(host)
        self._host[tid] = host
        PIDS.add(tid, host)
        self.threads[tid] = _remote(host, self.tramp, (self.scratch, SCRATCH_PAGES * PAGE_SIZE))

    # ------------------------------------------------------------------ syscalls in the task

    def sys(self, nr: int, *args: int, what: str = "", tid: int | None = None) -> int:
        r = (self.threads[tid] if tid is not None else self.remote).syscall(nr, *args)
        if -4096 < r < 0:
            name = what or f"syscall {nr}"
            raise SpiceError("restore", f"task {self.pid}: {name} failed: {os.strerror(-r)}")
        return r

    # ------------------------------------------------------------------ trampoline + scratch

    def map_trampoline(self, targets: list[tuple[int, int]]) -> None:
        """Map this task's trampoline in a hole of both its current and its future address space."""
        current = [(lo, hi) for lo, hi, _ in parse_maps(self.pid)]
        for _ in range(8):
            addr = find_hole(current + targets, TRAMPOLINE_SIZE)
            got = self.remote.syscall(
                NR.mmap, addr, TRAMPOLINE_SIZE, 7, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0
            )
            if got == addr:
                break
            current.append((addr, addr + TRAMPOLINE_SIZE))
        else:
            raise SpiceError("restore", f"task {self.pid}: cannot map the trampoline")
        from .batch import CODE, CODE_OFFSET

        self.remote.write(addr, TRAMPOLINE_CODE.ljust(CODE_OFFSET, b"\xcc") + CODE)
        self.use_trampoline(addr)

    def use_trampoline(self, addr: int) -> None:
        self.tramp = addr
        for tid in self.threads:
            self.threads[tid] = _remote(self._host[tid], addr, (self.scratch, SCRATCH_PAGES * PAGE_SIZE))
        self.remote = self.threads[self.plan.pid]

    @property
    def scratch(self) -> int:
        return self.tramp + PAGE_SIZE

    def reset_scratch(self) -> None:
        self._scratch_used = 0

    def put(self, data: bytes) -> int:
        """Copy bytes into the task's scratch area; returns their address there."""
        off = self._scratch_used
        size = (len(data) + 15) & ~15
        if off + size > SCRATCH_PAGES * PAGE_SIZE:
            raise SpiceError("restore", f"task {self.pid}: scratch area exhausted")
        addr = self.scratch + off
        self.remote.write(addr, data)
        self._scratch_used = off + size
        return addr

    def put_str(self, s: str) -> int:
        return self.put(os.fsencode(s) + b"\0")

    def batch(self):
        """A Batch of syscalls to run in this task with one stop (restore.batch)."""
        from .batch import Batch

        return Batch(self)

    def put_u64s(self, *vals: int) -> int:
        return self.put(struct.pack(f"<{len(vals)}Q", *(v & (1 << 64) - 1 for v in vals)))
