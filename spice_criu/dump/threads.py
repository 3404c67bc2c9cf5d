# SPDX-License-Identifier: MIT
"""Per-thread CPU and kernel state: core-<tid>.img thread_info and thread_core.

Mirror of restore/threads.py. Registers, FPU/xsave, TLS descriptors, the blocked mask, the rseq
registration and the robust-futex list are read from outside (ptrace, get_robust_list); what only the
thread can tell (its clear-tid address, sigaltstack, parent-death signal, securebits) comes from
syscalls injected into it (ThreadInTask). Registers are stored the way CRIU's compel stores them: a
syscall interrupted by the freeze is rewound to run again (or reports EINTR for restart-block ones).
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct

from .. import once
from ..arch import x86
from ..images.lite import Message
from ..linux import procvm
from ..linux import ptrace as pt
from ..linux.syscalls import (
    ERESTART_RESTARTBLOCK,
    ERESTARTNOHAND,
    ERESTARTNOINTR,
    ERESTARTSYS,
    NR,
    signed64,
    syscall,
)
from . import proc
from .intask import Batch

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

PR_GET_PDEATHSIG, PR_GET_SECUREBITS, PR_GET_TID_ADDRESS = 2, 27, 40
GDT_ENTRY_TLS_MIN, GDT_ENTRY_TLS_NUM = 12, 3
RSEQ_CS_FLAG_NO_RESTART_ON_SIGNAL = 1
ARCH_SHSTK_STATUS = 0x5005
SCHED_FIFO, SCHED_RR, SCHED_RESET_ON_FORK = 1, 2, 0x40000000
EINTR = 4
_U64 = (1 << 64) - 1


class ThreadInTask:
    """What only the thread itself can report (from injected syscalls)."""

    __slots__ = ("clear_tid_addr", "pdeath_sig", "ss_sp", "ss_flags", "ss_size", "secbits")

    def __init__(self) -> None:
        self.clear_tid_addr = self.pdeath_sig = self.ss_sp = self.ss_size = self.secbits = 0
        self.ss_flags = 2  # SS_DISABLE


def ask_in_task(b: Batch) -> Callable[[], ThreadInTask]:
    """prctl(PR_GET_TID_ADDRESS / PR_GET_PDEATHSIG / PR_GET_SECUREBITS) and sigaltstack(NULL, &old);
    returns what reads the answers once the batch ran."""
    buf = b.buffer(40)
    calls = [b.call(NR.prctl, PR_GET_TID_ADDRESS, buf, 0, 0, 0), b.call(NR.prctl, PR_GET_PDEATHSIG, buf + 8, 0, 0, 0),
             b.call(NR.sigaltstack, 0, buf + 16)]
    secbits = b.call(NR.prctl, PR_GET_SECUREBITS, 0, 0, 0, 0)

    def answer() -> ThreadInTask:
        for i in calls:
            b.check(i)
        out = ThreadInTask()
        out.secbits = b.check(secbits)
        raw = b.bytes(buf, 40)
        out.clear_tid_addr, out.pdeath_sig = struct.unpack_from("<Qi", raw, 0)
        out.ss_sp, out.ss_flags, _, out.ss_size = struct.unpack_from("<QiiQ", raw, 16)
        return out

    return answer


# ------------------------------------------------------------------------------------------ registers


def image_regs(regs: pt.UserRegs) -> pt.UserRegs:
    """The registers CRIU stores for a thread frozen at `regs` (compel_get_task_regs): an interrupted
    restartable syscall is rewound to be issued again; a restart-block one (nanosleep...) reports EINTR."""
    r = regs.copy()
    if signed64(r.orig_ax) >= 0:
        err = -signed64(r.ax)
        if err in (ERESTARTNOHAND, ERESTARTSYS, ERESTARTNOINTR):
            r.ax = r.orig_ax
            r.ip = (r.ip - 2) & _U64
        elif err == ERESTART_RESTARTBLOCK:
            r.ax = (-EINTR) & _U64
    return r


@once
def cpu_has_shstk() -> bool:
    """CPUID.(EAX=7,ECX=0):ECX.CET_SS[bit 7]: CRIU then records the (maybe empty) CET state."""
    try:
        return bool(x86.cpuid(7, 0)[2] & (1 << 7))
    except OSError:
        return False


def _cet(tid: int) -> tuple[int, int]:
    feats = ctypes.c_uint64()
    try:
        pt.ptrace(pt.ARCH_PRCTL, tid, ctypes.addressof(feats), ARCH_SHSTK_STATUS)
    except OSError as e:
        if e.errno == errno.EINVAL:
            return 0, 0
        raise
    if not feats.value & 1:
        return 0, 0
    ssp = struct.unpack("<Q", pt.getregset(tid, pt.NT_X86_SHSTK, 8).ljust(8, b"\0"))[0]
    return feats.value, ssp


def _tls(tid: int, ti: Message) -> None:
    for i in range(GDT_ENTRY_TLS_NUM):
        d = pt.get_thread_area(tid, GDT_ENTRY_TLS_MIN + i)
        fl = d.flags
        ti.tls.add(entry_number=d.entry_number, base_addr=d.base_addr, limit=d.limit,
                   seg_32bit=bool(fl & 1), contents_h=bool(fl & 4), contents_l=bool(fl & 2),
                   read_exec_only=bool(fl & 8), limit_in_pages=bool(fl & 16), seg_not_present=bool(fl & 32),
                   usable=bool(fl & 64))


def fill_thread_info(core: Message, tid: int, regs: pt.UserRegs, it: ThreadInTask) -> None:
    ti = core.thread_info
    ti.clear_tid_addr = it.clear_tid_addr
    x86.regs_to_image([getattr(regs, f) for f in x86.GP_FIELDS], ti.gpregs)
    fp = ti.fpregs
    x86.xsave_to_image(pt.get_xstate(tid), fp)
    if cpu_has_shstk() and fp.HasField("xsave"):
        cet, ssp = _cet(tid)
        fp.xsave.cet.cet, fp.xsave.cet.ssp = cet, ssp
    _tls(tid, ti)


# ------------------------------------------------------------------------------------------ thread core


def _sched(tid: int, tc: Message) -> None:
    policy = os.sched_getscheduler(tid)
    tc.sched_policy = policy
    if policy & ~SCHED_RESET_ON_FORK in (SCHED_FIFO, SCHED_RR):
        tc.sched_prio = os.sched_getparam(tid).sched_priority
    tc.sched_nice = os.getpriority(os.PRIO_PROCESS, tid)


def robust_list(tid: int) -> tuple[int, int]:
    """get_robust_list(tid): (head, len), read from outside as CRIU does."""
    head = ctypes.c_uint64()
    length = ctypes.c_size_t()
    syscall(NR.get_robust_list, tid, ctypes.addressof(head), ctypes.addressof(length))
    return head.value, length.value


def _rseq(tid: int, tc: Message) -> None:
    conf = pt.get_rseq_configuration(tid)
    if conf is None:
        return
    e = tc.rseq_entry
    e.rseq_abi_pointer, e.rseq_abi_size, e.signature = conf.rseq_abi_pointer, conf.rseq_abi_size, conf.signature
    if not conf.rseq_abi_pointer:
        return
    try:
        raw = procvm.read_any(tid, conf.rseq_abi_pointer, 32)
    except OSError:
        return
    cs_ptr, rseq_flags = struct.unpack_from("<Q", raw, 8)[0], struct.unpack_from("<I", raw, 16)[0]
    flags = rseq_flags
    if cs_ptr:
        try:
            flags |= struct.unpack_from("<I", procvm.read_any(tid, cs_ptr, 8), 4)[0]
        except OSError:
            pass
    if flags & RSEQ_CS_FLAG_NO_RESTART_ON_SIGNAL:
        e.rseq_cs_pointer = cs_ptr


def fill_thread_core(core: Message, pid: int, tid: int, it: ThreadInTask, leader: bool, cg_set: int) -> None:
    tc = core.thread_core
    tc.futex_rla, tc.futex_rla_len = robust_list(tid)
    _sched(tid, tc)
    if not leader:
        tc.blk_sigset = pt.getsigmask(tid)
    tc.sas.ss_sp, tc.sas.ss_size, tc.sas.ss_flags = it.ss_sp, it.ss_size, it.ss_flags & 0xFFFFFFFF
    if it.pdeath_sig:
        tc.pdeath_sig = it.pdeath_sig
    tc.comm = proc.read_text(f"/proc/{pid}/task/{tid}/comm", f"thread {tid}").rstrip("\n")
    _rseq(tid, tc)
    tc.cg_set = cg_set
