# SPDX-License-Identifier: MIT
"""Many syscalls for one ptrace stop: a table of syscalls run inside the task by a small loop in
its trampoline page.

Injecting one syscall costs two ptrace stops (entry and exit) plus register traffic; building an
address space takes dozens. The loop executes the table's entries in order, writes each result
back, stops at the first failure, and ends by sending itself SIGSTOP, which the restorer
intercepts. Only syscalls whose arguments are known up front go in a table (results of earlier
entries can't be used by later ones); clone3 never does (its fork events would stop the loop).
"""

from __future__ import annotations

import os
import struct

from ..errors import SpiceError
from ..inject import LOAD_ENTRY
from ..linux import ptrace
from .task import TaskCtl

ENTRY = struct.Struct("<8q")  # nr, a1..a6, result
CODE_OFFSET = 16  # in the trampoline page, after `syscall; int3`
# rbx = table, r12 = number of entries
CODE = bytes.fromhex(
    "4d85e4"  # test r12, r12
    "7432"  # jz done
) + LOAD_ENTRY + bytes.fromhex(  # loop: the entry's syscall
    "0f05"  # syscall
    "48894338"  # mov [rbx+56], rax
    "483d01f0ffff"  # cmp rax, -4095
    "7309"  # jae done (an error: stop here, rbx points at the failed entry)
    "4883c340"  # add rbx, 64
    "49ffcc"  # dec r12
    "75ce"  # jnz loop
    # done: tkill(gettid(), SIGSTOP) -- the restorer intercepts the signal
    "b8ba000000"  # mov eax, 186 (gettid)
    "0f05"  # syscall
    "89c7"  # mov edi, eax
    "be13000000"  # mov esi, 19 (SIGSTOP)
    "b8c8000000"  # mov eax, 200 (tkill)
    "0f05"  # syscall
    "ebfe"  # jmp . (never reached: the tracer takes over at the stop)
)
_U64 = (1 << 64) - 1


class Batch:
    """Queue syscalls with add(), run them all with run(); results come back in order."""

    def __init__(self, task: TaskCtl) -> None:
        self.task = task
        self.calls: list[tuple[int, tuple[int, ...], str]] = []
        self._running: list[tuple[int, tuple[int, ...], str]] = []
        self._table, self._base, self._tid, self._saved = b"", 0, 0, None

    def __len__(self) -> int:
        return len(self.calls)

    def add(self, nr: int, *args: int, what: str = "") -> int:
        """Queue a syscall; returns its index in the results."""
        self.calls.append((nr, args, what or f"syscall {nr}"))
        return len(self.calls) - 1

    def run(self, tid: int | None = None) -> list[int]:
        """Execute the queue in the task (leader by default). Raises naming the first failure."""
        self.start(tid)
        return self.finish()

    def start(self, tid: int | None = None) -> None:
        """Set the task running the queue and return at once: the restorer can work in parallel
        (on another CPU) until finish()."""
        task = self.task
        self._running, self.calls = self.calls, []
        if not self._running:
            return
        self._table = b"".join(ENTRY.pack(nr, *(list(a) + [0] * (6 - len(a))), 0) for nr, a, _ in self._running)
        self._base = task.put(self._table)
        self._tid = tid = task.pid if tid is None else task.host_tid(tid)  # (tid: the images')
        regs = ptrace.getregs(tid)
        self._saved = regs.copy()
        regs.ip = task.tramp + CODE_OFFSET
        regs.bx = self._base
        regs.r12 = len(self._running)
        regs.orig_ax = _U64
        ptrace.setregs(tid, regs)
        ptrace.cont(tid, 0)

    def finish(self) -> list[int]:
        """Wait for the queue started by start() to end; its results, in order."""
        task, calls, tid = self.task, self._running, self._tid
        self._running = []
        if not calls:
            return []
        while True:
            st = ptrace.waitpid(tid)
            if st.gone:
                raise SpiceError("restore", f"task {task.pid} died while running syscalls ({st})")
            if st.stopped and st.stopsig == 19 and not st.event:
                break
            ptrace.cont(tid, 0)  # an event/unrelated stop: keep the loop going
        ptrace.setregs(tid, self._saved)
        raw = task.remote.read(self._base, len(self._table))
        results = [ENTRY.unpack_from(raw, i * ENTRY.size)[7] for i in range(len(calls))]
        for res, (_, _, what) in zip(results, calls, strict=True):
            if -4096 < res < 0:  # the loop stopped here; later entries never ran
                raise SpiceError("restore", f"task {task.pid}: {what} failed: {os.strerror(-res)}")
        return results
