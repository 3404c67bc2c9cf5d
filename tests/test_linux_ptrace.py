# SPDX-License-Identifier: MIT
"""linux.ptrace on real tasks: stop kinds as decoded by WaitStatus, syscall info, signal state
(mask, pending queues, siginfo), rseq, TLS, seccomp, word access, and the register helpers."""

from __future__ import annotations

import ctypes
import os
import signal
import struct
import time

from progs import Target, seize_stopped, wait_state

from spice_criu.linux import ptrace as pt
from spice_criu.linux.rseq import RSEQ_SIG
from spice_criu.linux.signals import (
    FP_XSTATE_MAGIC1,
    FP_XSTATE_MAGIC2,
    SI_QUEUE,
    SI_TKILL,
    SI_USER,
    RtSigframe,
    Siginfo,
    build_rt_sigframe,
    sigmask,
    signals_in,
)
from spice_criu.linux.syscalls import NR, signed64, syscall

SIGNAL_TARGET = """
import signal, sys, time
signal.signal(signal.SIGUSR1, lambda *a: None)
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2, signal.SIGRTMIN, signal.SIGHUP})
print("ready", flush=True)
while True:
    time.sleep(0.01)
"""


def test_stop_kinds_are_decoded():
    with Target.prog("blocker", "sleep", "2000") as t:
        t.wait_for("ready")
        pt.seize(t.pid, pt.O_TRACESYSGOOD)
        pt.interrupt(t.pid)
        st = pt.waitpid(t.pid)
        assert st.stopped and st.interrupt_stop and st.event == pt.EVENT_STOP and not st.group_stop
        assert "event-stop(128" in repr(st)
        assert pt.get_syscall_info(t.pid).op == pt.SYSCALL_INFO_NONE
        os.kill(t.pid, signal.SIGSTOP)
        pt.cont(t.pid)
        st = pt.waitpid(t.pid)
        assert st.signal_stop and st.stopsig == signal.SIGSTOP and not st.syscall_stop
        si = pt.getsiginfo(t.pid)
        assert (si.si_signo, si.si_code, si.pid) == (signal.SIGSTOP, SI_USER, os.getpid())
        pt.cont(t.pid, signal.SIGSTOP)
        st = pt.waitpid(t.pid)
        assert st.group_stop and st.stopsig == signal.SIGSTOP and "group-stop" in repr(st)
        pt.listen(t.pid)
        os.kill(t.pid, signal.SIGCONT)
        st = pt.waitpid(t.pid)
        assert st.event == pt.EVENT_STOP and st.stopsig == signal.SIGTRAP  # listen -> re-trap
        pt.resume_syscall(t.pid)
        st = pt.waitpid(t.pid)
        assert st.signal_stop and st.stopsig == signal.SIGCONT  # SIGCONT itself is then delivered
        # syscall entry / exit stops with the info the kernel gives about them
        pt.resume_syscall(t.pid, signal.SIGCONT)
        st = pt.waitpid(t.pid)
        assert st.syscall_stop and st.status == pt.SYSCALL_STOP and repr(st).endswith("syscall-stop)")
        info = pt.get_syscall_info(t.pid)
        assert info.op == pt.SYSCALL_INFO_ENTRY and info.arch == 0xC000003E
        assert info.u.entry.nr == NR.restart_syscall  # the interrupted nanosleep resumes
        pt.resume_syscall(t.pid)
        assert pt.waitpid(t.pid).syscall_stop
        info = pt.get_syscall_info(t.pid)
        assert info.op == pt.SYSCALL_INFO_EXIT and info.u.exit.is_error == 0 and info.u.exit.rval == 0
        pt.kill(t.pid)
        st = pt.waitpid(t.pid)
        assert st.gone and st.signaled and st.termsig == signal.SIGKILL


def test_exit_status_decoded():
    with Target.python("import sys; sys.stdin.read(); sys.exit(3)", stdin=os.pipe()[0]) as t:
        seize_stopped(t.pid)
        pt.setoptions(t.pid, pt.O_TRACESYSGOOD | pt.O_TRACEEXIT)
        os.kill(t.pid, signal.SIGTERM)
        pt.cont(t.pid)
        st = pt.waitpid(t.pid)
        assert st.signal_stop and st.stopsig == signal.SIGTERM
        pt.cont(t.pid, signal.SIGTERM)
        st = pt.waitpid(t.pid)
        assert st.event == pt.EVENT_EXIT and pt.geteventmsg(t.pid) == signal.SIGTERM  # wait status
        pt.cont(t.pid)
        st = pt.waitpid(t.pid)
        assert st.signaled and st.termsig == signal.SIGTERM


def test_sigmask_and_pending_queues():
    with Target.python(SIGNAL_TARGET) as t:
        t.wait_for("ready")
        seize_stopped(t.pid)
        blocked = pt.getsigmask(t.pid)
        assert set(signals_in(blocked)) == {signal.SIGUSR2, signal.SIGRTMIN, signal.SIGHUP}
        pt.setsigmask(t.pid, blocked | sigmask([signal.SIGWINCH]))
        assert pt.getsigmask(t.pid) == blocked | sigmask([signal.SIGWINCH])
        pt.setsigmask(t.pid, blocked)
        # private (thread) queue: tgkill; shared queue: kill and rt_sigqueueinfo with a value
        syscall(NR.tgkill, t.pid, t.pid, signal.SIGHUP)
        os.kill(t.pid, signal.SIGUSR2)
        si = Siginfo(si_signo=signal.SIGRTMIN, si_code=SI_QUEUE)
        si.pid, si.uid, si.value = os.getpid(), os.getuid(), 0x1234_5678_9ABC
        syscall(NR.rt_sigqueueinfo, t.pid, signal.SIGRTMIN, ctypes.addressof(si))
        private = pt.peeksiginfo(t.pid)
        shared = pt.peeksiginfo(t.pid, shared=True)
        assert [(s.si_signo, s.si_code) for s in private] == [(signal.SIGHUP, SI_TKILL)]
        assert [(s.si_signo, s.si_code) for s in shared] == [(signal.SIGUSR2, SI_USER), (signal.SIGRTMIN, SI_QUEUE)]
        assert shared[0].pid == os.getpid() and shared[1].value == 0x1234_5678_9ABC
        assert [s.si_signo for s in pt.peeksiginfo(t.pid, shared=True, off=1)] == [signal.SIGRTMIN]
        # a delivered signal: siginfo at the signal-delivery-stop, and setsiginfo changes it
        os.kill(t.pid, signal.SIGUSR1)
        pt.cont(t.pid)
        st = pt.waitpid(t.pid)
        assert st.signal_stop and st.stopsig == signal.SIGUSR1
        si = pt.getsiginfo(t.pid)
        assert (si.si_signo, si.pid) == (signal.SIGUSR1, os.getpid())
        si.value = 77
        pt.setsiginfo(t.pid, si)
        assert pt.getsiginfo(t.pid).value == 77
        pt.detach(t.pid, signal.SIGUSR1)
        time.sleep(0.05)
        assert t.proc.poll() is None  # the handler ran


def test_rseq_tls_fsbase_and_words():
    with Target.prog("blocker", "sleep", "2000") as t:
        t.wait_for("ready")
        seize_stopped(t.pid)
        regs = pt.getregs(t.pid)
        conf = pt.get_rseq_configuration(t.pid)
        assert conf is not None and conf.rseq_abi_pointer and conf.signature == RSEQ_SIG
        assert conf.rseq_abi_size >= 20
        assert pt.arch_prctl(t.pid, pt.ARCH_GET_FS) == regs.fs_base != 0
        assert pt.arch_prctl(t.pid, pt.ARCH_GET_GS) == regs.gs_base
        for entry in (12, 13, 14):  # the GDT TLS slots: unused by a 64-bit glibc program
            d = pt.get_thread_area(t.pid, entry)
            assert d.entry_number == entry and d.base_addr == 0
        # fs_base points at glibc's TCB whose first word is the TCB itself
        assert pt.peekdata(t.pid, regs.fs_base) == regs.fs_base
        addr = regs.sp - 4096
        old = pt.peekdata(t.pid, addr)
        pt.pokedata(t.pid, addr, 0x1122334455667788)
        assert pt.peekdata(t.pid, addr) == 0x1122334455667788
        pt.pokedata(t.pid, addr, old)
        assert pt.peekuser(t.pid, pt.REG_OFFSET["sp"]) == regs.sp
        pt.pokeuser(t.pid, pt.REG_OFFSET["r12"], regs.r12)
        assert pt.getregs(t.pid) == regs


SECCOMP_TARGET = """
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
# kill the process on getppid(2), allow everything else
prog = (ctypes.c_uint64 * 4)(0x0000000000000020, 0x0000006e01000015, 0x8000000000000006, 0x7fff000000000006)
class Fprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
fp = Fprog(4, ctypes.addressof(prog))
assert libc.prctl(38, 1, 0, 0, 0) == 0
assert libc.prctl(22, 2, ctypes.byref(fp), 0, 0) == 0, ctypes.get_errno()
print("ready", flush=True)
while True:
    time.sleep(0.01)
"""


def test_seccomp_filter_readable_and_suspended_for_injection():
    from spice_criu.dump.seize import freeze
    from spice_criu.inject import Remote

    with Target.python(SECCOMP_TARGET) as t:
        t.wait_for("ready")
        with freeze(t.pid):
            raw = pt.seccomp_get_filter(t.pid, 0)
            assert struct.unpack("<4Q", raw) == (0x20, 0x0000006E01000015, 0x8000000000000006, 0x7FFF000000000006)
            with Remote(t.pid) as r:  # freeze set PTRACE_O_SUSPEND_SECCOMP: getppid does not kill
                assert r.check(NR.getppid) == os.getpid()
        time.sleep(0.05)
        assert t.proc.poll() is None
        with open(f"/proc/{t.pid}/status") as f:
            assert "Seccomp:\t2" in f.read()


def test_restarted_mirrors_the_kernel():
    r = pt.UserRegs(ip=0x1002, orig_ax=NR.nanosleep, ax=(-516) & 0xFFFF_FFFF_FFFF_FFFF, di=5)
    assert (r.restarted().ip, r.restarted().ax) == (0x1000, NR.restart_syscall)
    assert r.restarted(reexecute=True).ax == NR.nanosleep
    for err in (512, 513, 514):
        r.ax = -err & 0xFFFF_FFFF_FFFF_FFFF
        assert (r.restarted().ip, r.restarted().ax, r.restarted().di) == (0x1000, NR.nanosleep, 5)
    r.ax = -4 & 0xFFFF_FFFF_FFFF_FFFF  # EINTR: returned as is
    assert r.restarted() == r
    r.ax, r.orig_ax = -512 & 0xFFFF_FFFF_FFFF_FFFF, 0xFFFF_FFFF_FFFF_FFFF  # not in a syscall
    assert r.restarted() == r and not r.in_syscall()
    d = r.as_dict()
    assert list(d)[:3] == ["r15", "r14", "r13"] and pt.UserRegs.from_dict(d) == r
    assert signed64(r.ax) == -512


def test_rt_sigframe_layout():
    xs = bytearray(1024)
    struct.pack_into("<Q", xs, 464, 0x7)  # ptrace's XCR0 word
    struct.pack_into("<Q", xs, 512, 0x3)  # xstate_bv
    regs = pt.UserRegs(ip=0x401000, sp=0x7FFF0000, ax=1, cs=0x33, ss=0x2B, flags=0x246)
    base = 0x7FFE0008
    frame = build_rt_sigframe(base, regs, bytes(xs), sigmask([signal.SIGUSR1]), pretcode=0xDEAD)
    f = RtSigframe.from_buffer_copy(frame)
    assert f.pretcode == 0xDEAD and f.uc.uc_sigmask == 1 << (signal.SIGUSR1 - 1)
    mc = f.uc.uc_mcontext
    assert (mc.ip, mc.sp, mc.ax, mc.flags, mc.cs, mc.ss) == (0x401000, 0x7FFF0000, 1, 0x246, 0x33, 0x2B)
    assert f.uc.uc_flags & 1 and mc.fpstate % 64 == 0 and mc.fpstate >= base + ctypes.sizeof(RtSigframe)
    off = mc.fpstate - base
    magic1, ext, feats, size = struct.unpack_from("<IIQI", frame, off + 464)
    assert (magic1, ext, feats, size) == (FP_XSTATE_MAGIC1, 1028, 0x7, 1024)
    assert struct.unpack_from("<I", frame, off + 1024)[0] == FP_XSTATE_MAGIC2 and len(frame) == off + 1028
    # a CPU without XSAVE: the bare fxsave image, no UC_FP_XSTATE, no magic
    legacy = build_rt_sigframe(base, regs, bytes(512), 0)
    f = RtSigframe.from_buffer_copy(legacy)
    assert not f.uc.uc_flags & 1 and len(legacy) == f.uc.uc_mcontext.fpstate - base + 512


def test_waitid_reports_stops():
    with Target.prog("blocker", "sleep", "2000") as t:
        t.wait_for("ready")
        pt.seize(t.pid, pt.O_TRACESYSGOOD)
        pt.interrupt(t.pid)
        wait_state(t.pid, "t")
        res = pt.waitid(os.P_PID, t.pid, os.WSTOPPED | os.WNOWAIT | pt.WALL)
        assert res.si_pid == t.pid and res.si_code == os.CLD_TRAPPED
        assert pt.waitpid(t.pid).interrupt_stop
        pt.detach(t.pid)
