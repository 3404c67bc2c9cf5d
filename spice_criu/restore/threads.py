# SPDX-License-Identifier: MIT
"""Threads: re-created with their original TIDs inside the restored process, then given back their
kernel-side registrations (rseq, robust futex list, clear-tid address) and finally their CPU state."""

from __future__ import annotations

import struct

from ..arch import x86
from ..linux import ptrace
from ..linux.syscalls import NR
from .plan import ThreadPlan
from .task import TaskCtl

CLONE_VM, CLONE_FS, CLONE_FILES, CLONE_SIGHAND = 0x100, 0x200, 0x400, 0x800
CLONE_THREAD, CLONE_SYSVSEM = 0x10000, 0x40000
THREAD_FLAGS = CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD | CLONE_SYSVSEM
_U64 = (1 << 64) - 1


def clone_args(flags: int, set_tid_ptr: int, exit_signal: int = 0) -> bytes:
    """struct clone_args (v2, 88 bytes) with one entry in set_tid."""
    return struct.pack("<11Q", flags, 0, 0, 0, exit_signal, 0, 0, 0, set_tid_ptr, 1, 0)


def cloned_host_pid(remote, got: int) -> int:
    """Our pid of the task or thread a clone injected through `remote` just made (`got`: its pid as
    the cloning task sees it): the event message of the fork/clone stop we saw as its tracer."""
    for event, msg in reversed(remote.events):
        if event in (ptrace.EVENT_FORK, ptrace.EVENT_VFORK, ptrace.EVENT_CLONE):
            return msg
    return got  # (no event: traced without those options; then it shares our pid namespace)


def create_thread(task: TaskCtl, tid: int) -> None:
    """clone3() a thread with TID `tid` (as the task sees it) inside the task; it starts stopped,
    traced by us."""
    tids = task.put(struct.pack("<i", tid))
    args = task.put(clone_args(THREAD_FLAGS, tids))
    task.remote.events.clear()
    got = task.sys(NR.clone3, args, 88, what=f"clone3 thread {tid}")
    task.reset_scratch()
    if got != tid:
        raise RuntimeError(f"clone3 gave tid {got}, wanted {tid}")
    task.adopt_thread(tid, cloned_host_pid(task.remote, got))


def queue_thread_kernel_state(b, th: ThreadPlan) -> None:
    """Robust futex list and clear-tid address (always, zero included: a stub has none, a thread
    cloned in the task inherits nothing), and the rseq area, registered by the thread itself
    (these calls act on the calling thread)."""
    tcore = th.core.thread_core
    b.add(NR.set_robust_list, tcore.futex_rla, tcore.futex_rla_len or 24, what="set_robust_list")
    b.add(NR.set_tid_address, th.core.thread_info.clear_tid_addr, what="set_tid_address")
    if tcore.HasField("rseq_entry") and tcore.rseq_entry.rseq_abi_pointer:
        r = tcore.rseq_entry
        b.add(NR.rseq, r.rseq_abi_pointer, r.rseq_abi_size, 0, r.signature, what="rseq")


#: syscalls that keep the time left of an interrupted call in the kernel's restart block, which
#: no restore can give back: a dump (CRIU's and ours) records them as returning EINTR (with orig_ax
#: still their number). Programs that take EINTR for an error die of that after a criu restore
#: (GNU `tail -f` and util-linux `script` in poll(), C loops around nanosleep()). spice re-executes
#: them instead, with their own arguments (still in the registers): a relative timeout starts over.
#: (A task already inside restart_syscall(2) when dumped, as after an earlier `-R` dump, has lost
#: the original call's number: orig_ax is restart_syscall's, and it gets EINTR as under criu.)
REEXECUTED = frozenset({NR.poll, NR.nanosleep, NR.futex, NR.clock_nanosleep})
_EINTR = (-4) & ((1 << 64) - 1)


def final_regs(th: ThreadPlan) -> ptrace.UserRegs:
    """The thread's dumped registers; orig_ax=-1 so the kernel applies no syscall-restart logic on
    the way out (the dump already folded the restart decision into ax/ip)."""
    regs = ptrace.UserRegs()
    for name, value in zip(x86.GP_FIELDS, x86.regs_from_image(th.core.thread_info.gpregs), strict=True):
        setattr(regs, name, value)
    if regs.ax == _EINTR and regs.orig_ax in REEXECUTED:
        regs.ax, regs.ip = regs.orig_ax, regs.ip - 2
    regs.orig_ax = _U64
    return regs


def set_fpu(th: ThreadPlan, host: int | None = None) -> None:
    """The dumped FPU state: as an xsave area, or as the 512-byte fxsave image on CPUs without
    XSAVE (e.g. qemu's TCG default CPU), where only the legacy x87/SSE part can be restored.
    host: the thread's tid in our pid namespace (default: the image's)."""
    fpregs = th.core.thread_info.fpregs
    tid = th.tid if host is None else host
    if ptrace.has_xstate(tid):
        ptrace.set_xstate(tid, x86.xsave_from_image(fpregs, ptrace.get_xstate(tid)))
    else:
        ptrace.set_fpregs_raw(tid, x86.xsave_from_image(fpregs, bytes(ptrace.get_fpregs(tid))))


def set_cpu_state(th: ThreadPlan, host: int | None = None) -> None:
    """FPU state, then the general registers, of a stopped thread (host: its tid in our namespace)."""
    set_fpu(th, host)
    ptrace.setregs(th.tid if host is None else host, final_regs(th))
