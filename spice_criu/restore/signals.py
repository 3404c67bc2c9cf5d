# SPDX-License-Identifier: MIT
"""Signal state: dispositions, blocked masks, pending signals, alternate stacks.

Dispositions are installed only where the image or the task differs from the default, because
each one is a syscall inside the task; masks are set with PTRACE_SETSIGMASK from outside.
"""

from __future__ import annotations

import struct

from ..linux import ptrace
from ..linux.syscalls import NR
from .task import TaskCtl

SIGKILL, SIGSTOP = 9, 19
SS_ONSTACK, SS_DISABLE, SS_AUTODISARM = 1, 2, 1 << 31
ALL_SIGNALS = (1 << 64) - 1
#: signal numbers of tc.sigactions, in order (CRIU stores SIGMAX-2 = 62 entries)
SIGACTION_SIGNALS = [s for s in range(1, 65) if s not in (SIGKILL, SIGSTOP)]


def _nondefault_now(pid: int) -> int:
    """Mask of signals the task currently catches or ignores (/proc/PID/status)."""
    mask = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("SigIgn:", "SigCgt:")):
                mask |= int(line.split()[1], 16)
    return mask


def sigaction_structs(tc) -> list[tuple[int, bytes, bool]]:
    """(signal, struct k_sigaction bytes, is_default) for every entry of tc.sigactions."""
    if len(tc.sigactions) != len(SIGACTION_SIGNALS):
        raise ValueError(f"Bad number of sigactions in the image ({len(tc.sigactions)})")
    out = []
    for sig, sa in zip(SIGACTION_SIGNALS, tc.sigactions, strict=True):
        raw = struct.pack("<QQQQ", sa.sigaction, sa.flags, sa.restorer, sa.mask)
        out.append((sig, raw, not (sa.sigaction or sa.flags or sa.restorer or sa.mask)))
    return out


def install_sigactions(task: TaskCtl) -> None:
    b = task.batch()
    queue_sigactions(task, b)
    b.run()
    task.reset_scratch()


def queue_sigactions(task: TaskCtl, b) -> None:
    """Queue on batch b the rt_sigaction() calls that give the task its dumped dispositions."""
    current = _nondefault_now(task.pid)
    for sig, raw, default in sigaction_structs(task.plan.tc):
        if default and not current & (1 << (sig - 1)):
            continue
        b.add(NR.rt_sigaction, sig, task.put(raw), 0, 8, what=f"rt_sigaction({sig})")


def blocked_mask(core) -> int:
    tc = core.thread_core
    if tc.HasField("blk_sigset"):
        return tc.blk_sigset
    return core.tc.blk_sigset if core.HasField("tc") else 0


def queue_thread_signals(task: TaskCtl, b, tid: int, core) -> None:
    """Per-thread: alternate stack, private pending signals (the mask is set last, from outside)."""
    tcore = core.thread_core
    if tcore.HasField("sas"):
        sas = tcore.sas
        flags = sas.ss_flags & ~SS_ONSTACK
        st = struct.pack("<QiiQ", sas.ss_sp, flags, 0, sas.ss_size)
        b.add(NR.sigaltstack, task.put(st), 0, what="sigaltstack")
    if tcore.HasField("signals_p"):
        for si in tcore.signals_p.signals:
            raw = bytes(si.siginfo).ljust(128, b"\0")
            signo = struct.unpack_from("<i", raw)[0]
            b.add(NR.rt_tgsigqueueinfo, task.plan.pid, tid, signo, task.put(raw), what="queue signal")


def install_shared_pending(task: TaskCtl) -> None:
    tc = task.plan.tc
    if tc.HasField("signals_s"):
        for si in tc.signals_s.signals:
            raw = bytes(si.siginfo).ljust(128, b"\0")
            signo = struct.unpack_from("<i", raw)[0]
            task.sys(NR.rt_sigqueueinfo, task.plan.pid, signo, task.put(raw), what="queue shared signal")
    task.reset_scratch()


def set_blocked(tid: int, core) -> None:
    ptrace.setsigmask(tid, blocked_mask(core))
