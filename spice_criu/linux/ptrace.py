# SPDX-License-Identifier: MIT
"""ptrace(2) for x86_64: requests, register sets, signal state, and wait-status decoding.

Every function takes a tid (ptrace works on threads) and raises OSError on failure. `UserRegs`
is `struct user_regs_struct`, field for field in the order of CRIU's user_x86_regs_entry.
"""

from __future__ import annotations

import ctypes
import errno
import os

from .signals import SIGTRAP, STOP_SIGNALS, Siginfo
from .syscalls import NR, RESTART_ERRNOS, c_long, c_ulong, fresh, libc, raise_errno, signed64

TRACEME = 0
PEEKTEXT = 1
PEEKDATA = 2
PEEKUSER = 3
POKETEXT = 4
POKEDATA = 5
POKEUSER = 6
CONT = 7
KILL = 8
SINGLESTEP = 9
GETREGS = 12
SETREGS = 13
GETFPREGS = 14
SETFPREGS = 15
ATTACH = 16
DETACH = 17
SYSCALL = 24
GET_THREAD_AREA = 25
SET_THREAD_AREA = 26
ARCH_PRCTL = 30
SYSEMU = 31
SETOPTIONS = 0x4200
GETEVENTMSG = 0x4201
GETSIGINFO = 0x4202
SETSIGINFO = 0x4203
GETREGSET = 0x4204
SETREGSET = 0x4205
SEIZE = 0x4206
INTERRUPT = 0x4207
LISTEN = 0x4208
PEEKSIGINFO = 0x4209
GETSIGMASK = 0x420A
SETSIGMASK = 0x420B
SECCOMP_GET_FILTER = 0x420C
SECCOMP_GET_METADATA = 0x420D
GET_SYSCALL_INFO = 0x420E  # 5.3
GET_RSEQ_CONFIGURATION = 0x420F  # 5.13

O_TRACESYSGOOD = 0x1
O_TRACEFORK = 0x2
O_TRACEVFORK = 0x4
O_TRACECLONE = 0x8
O_TRACEEXEC = 0x10
O_TRACEVFORKDONE = 0x20
O_TRACEEXIT = 0x40
O_TRACESECCOMP = 0x80
O_EXITKILL = 1 << 20
O_SUSPEND_SECCOMP = 1 << 21

EVENT_FORK = 1
EVENT_VFORK = 2
EVENT_CLONE = 3
EVENT_EXEC = 4
EVENT_VFORK_DONE = 5
EVENT_EXIT = 6
EVENT_SECCOMP = 7
EVENT_STOP = 128

PEEKSIGINFO_SHARED = 1

NT_PRSTATUS = 1
NT_PRFPREG = 2
NT_X86_XSTATE = 0x202
NT_X86_SHSTK = 0x204  # 6.6+

ARCH_SET_GS = 0x1001
ARCH_SET_FS = 0x1002
ARCH_GET_FS = 0x1003
ARCH_GET_GS = 0x1004

SYSCALL_INFO_NONE = 0
SYSCALL_INFO_ENTRY = 1
SYSCALL_INFO_EXIT = 2
SYSCALL_INFO_SECCOMP = 3

WALL = 0x40000000  # __WALL
WNOTHREAD = 0x20000000
WCLONE = 0x80000000

# raw syscall so that PEEK* store through `data` like every other request
_ptrace = fresh(libc, "syscall", c_long, [c_long, c_long, c_long, c_ulong, c_ulong])


def ptrace(req: int, tid: int, addr: int = 0, data: int = 0) -> int:
    ret = _ptrace(NR.ptrace, req, tid, addr, data)
    if ret == -1:
        raise_errno(f"ptrace({req:#x}, {tid})")
    return ret


REG_NAMES = ("r15", "r14", "r13", "r12", "bp", "bx", "r11", "r10", "r9", "r8", "ax", "cx", "dx", "si",
             "di", "orig_ax", "ip", "cs", "flags", "sp", "ss", "fs_base", "gs_base", "ds", "es", "fs", "gs")


class UserRegs(ctypes.Structure):
    """struct user_regs_struct (x86_64), same order as CRIU's user_x86_regs_entry."""

    _fields_ = [(n, ctypes.c_uint64) for n in REG_NAMES]

    def copy(self) -> UserRegs:
        return UserRegs.from_buffer_copy(self)

    def as_dict(self) -> dict[str, int]:
        return {n: getattr(self, n) for n in REG_NAMES}

    @classmethod
    def from_dict(cls, d: dict[str, int]) -> UserRegs:
        r = cls()
        for n in REG_NAMES:
            setattr(r, n, d[n])
        return r

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UserRegs) and bytes(self) == bytes(other)

    __hash__ = None  # mutable

    def __repr__(self) -> str:
        return "UserRegs(" + ", ".join(f"{n}={getattr(self, n):#x}" for n in REG_NAMES) + ")"

    def in_syscall(self) -> bool:
        """The task was stopped on the way out of a syscall (orig_ax holds its number)."""
        return signed64(self.orig_ax) >= 0

    def restarted(self, reexecute: bool = False) -> UserRegs:
        """The registers the kernel would return to user mode with when no signal handler runs.

        Mirrors arch_do_signal_or_restart(): -ERESTARTSYS/-ERESTARTNOINTR/-ERESTARTNOHAND re-execute
        the syscall (ax=orig_ax, ip-=2); -ERESTART_RESTARTBLOCK calls restart_syscall(2), or, with
        `reexecute` (for contexts entered through rt_sigreturn, which resets the restart block),
        re-executes the original syscall (a relative timeout then starts over).
        """
        r = self.copy()
        if ctypes.c_int32(self.orig_ax & 0xFFFFFFFF).value >= 0:
            err = -signed64(self.ax)
            if err in RESTART_ERRNOS:
                r.ax = NR.restart_syscall if err == 516 and not reexecute else self.orig_ax
                r.ip = self.ip - 2
        return r


assert ctypes.sizeof(UserRegs) == 27 * 8
REG_OFFSET = {n: i * 8 for i, n in enumerate(REG_NAMES)}


class UserFpregs(ctypes.Structure):
    """struct user_fpregs_struct (the 512-byte fxsave image, NT_PRFPREG)."""

    _fields_ = [
        ("cwd", ctypes.c_uint16),
        ("swd", ctypes.c_uint16),
        ("ftw", ctypes.c_uint16),
        ("fop", ctypes.c_uint16),
        ("rip", ctypes.c_uint64),
        ("rdp", ctypes.c_uint64),
        ("mxcsr", ctypes.c_uint32),
        ("mxcr_mask", ctypes.c_uint32),
        ("st_space", ctypes.c_uint32 * 32),
        ("xmm_space", ctypes.c_uint32 * 64),
        ("padding", ctypes.c_uint32 * 24),
    ]


assert ctypes.sizeof(UserFpregs) == 512


class Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class UserDesc(ctypes.Structure):
    """struct user_desc (GDT TLS entries, PTRACE_GET_THREAD_AREA)."""

    _fields_ = [("entry_number", ctypes.c_uint32), ("base_addr", ctypes.c_uint32),
                ("limit", ctypes.c_uint32), ("flags", ctypes.c_uint32)]


class PeeksiginfoArgs(ctypes.Structure):
    _fields_ = [("off", ctypes.c_uint64), ("flags", ctypes.c_uint32), ("nr", ctypes.c_int32)]


class RseqConfiguration(ctypes.Structure):
    _fields_ = [("rseq_abi_pointer", ctypes.c_uint64), ("rseq_abi_size", ctypes.c_uint32),
                ("signature", ctypes.c_uint32), ("flags", ctypes.c_uint32), ("pad", ctypes.c_uint32)]


class _SyscallEntry(ctypes.Structure):
    _fields_ = [("nr", ctypes.c_uint64), ("args", ctypes.c_uint64 * 6)]


class _SyscallExit(ctypes.Structure):
    _fields_ = [("rval", ctypes.c_int64), ("is_error", ctypes.c_uint8)]


class _SyscallSeccomp(ctypes.Structure):
    _fields_ = [("nr", ctypes.c_uint64), ("args", ctypes.c_uint64 * 6), ("ret_data", ctypes.c_uint32)]


class _SyscallInfoUnion(ctypes.Union):
    _fields_ = [("entry", _SyscallEntry), ("exit", _SyscallExit), ("seccomp", _SyscallSeccomp)]


class SyscallInfo(ctypes.Structure):
    """struct ptrace_syscall_info (PTRACE_GET_SYSCALL_INFO)."""

    _fields_ = [("op", ctypes.c_uint8), ("_pad", ctypes.c_uint8 * 3), ("arch", ctypes.c_uint32),
                ("instruction_pointer", ctypes.c_uint64), ("stack_pointer", ctypes.c_uint64),
                ("u", _SyscallInfoUnion)]


# --- requests -------------------------------------------------------------------------------------


def seize(tid: int, options: int = 0) -> None:
    ptrace(SEIZE, tid, 0, options)


def attach(tid: int) -> None:
    ptrace(ATTACH, tid)


def interrupt(tid: int) -> None:
    ptrace(INTERRUPT, tid)


def listen(tid: int) -> None:
    ptrace(LISTEN, tid)


def cont(tid: int, sig: int = 0) -> None:
    ptrace(CONT, tid, 0, sig)


def resume_syscall(tid: int, sig: int = 0) -> None:
    """PTRACE_SYSCALL: resume until the next syscall entry or exit."""
    ptrace(SYSCALL, tid, 0, sig)


def singlestep(tid: int, sig: int = 0) -> None:
    ptrace(SINGLESTEP, tid, 0, sig)


def detach(tid: int, sig: int = 0) -> None:
    ptrace(DETACH, tid, 0, sig)


def kill(tid: int) -> None:
    ptrace(KILL, tid)


def setoptions(tid: int, options: int) -> None:
    ptrace(SETOPTIONS, tid, 0, options)


def geteventmsg(tid: int) -> int:
    v = ctypes.c_ulong()
    ptrace(GETEVENTMSG, tid, 0, ctypes.addressof(v))
    return v.value


def peekdata(tid: int, addr: int) -> int:
    v = ctypes.c_ulong()
    ptrace(PEEKDATA, tid, addr, ctypes.addressof(v))
    return v.value


def pokedata(tid: int, addr: int, word: int) -> None:
    ptrace(POKEDATA, tid, addr, word & 0xFFFF_FFFF_FFFF_FFFF)


def peekuser(tid: int, offset: int) -> int:
    v = ctypes.c_ulong()
    ptrace(PEEKUSER, tid, offset, ctypes.addressof(v))
    return v.value


def pokeuser(tid: int, offset: int, word: int) -> None:
    ptrace(POKEUSER, tid, offset, word & 0xFFFF_FFFF_FFFF_FFFF)


def getregs(tid: int, regs: UserRegs | None = None) -> UserRegs:
    r = UserRegs() if regs is None else regs
    ptrace(GETREGS, tid, 0, ctypes.addressof(r))
    return r


def setregs(tid: int, regs: UserRegs) -> None:
    ptrace(SETREGS, tid, 0, ctypes.addressof(regs))


def getregset(tid: int, note: int, size: int) -> bytes:
    """PTRACE_GETREGSET into a `size`-byte buffer; returns the bytes the kernel filled."""
    buf = ctypes.create_string_buffer(size)
    iov = Iovec(ctypes.cast(buf, ctypes.c_void_p), size)
    ptrace(GETREGSET, tid, note, ctypes.addressof(iov))
    return buf.raw[: iov.iov_len]


def setregset(tid: int, note: int, data: bytes) -> None:
    buf = ctypes.create_string_buffer(bytes(data), len(data))
    iov = Iovec(ctypes.cast(buf, ctypes.c_void_p), len(data))
    ptrace(SETREGSET, tid, note, ctypes.addressof(iov))


def get_fpregs(tid: int) -> UserFpregs:
    return UserFpregs.from_buffer_copy(getregset(tid, NT_PRFPREG, ctypes.sizeof(UserFpregs)))


def set_fpregs(tid: int, fp: UserFpregs) -> None:
    setregset(tid, NT_PRFPREG, bytes(fp))


def set_fpregs_raw(tid: int, data: bytes) -> None:
    """Set the fxsave image (e.g. from get_fpstate on a CPU without XSAVE)."""
    setregset(tid, NT_PRFPREG, data)


_xstate_size: int | None = None


def xstate_size(tid: int) -> int:
    """Size of the NT_X86_XSTATE regset: the kernel truncates iov_len to it (asked once, cached).
    0 on CPUs without XSAVE (the kernel answers ENODEV), e.g. qemu's default TCG CPU."""
    global _xstate_size
    if _xstate_size is None:
        try:
            _xstate_size = len(getregset(tid, NT_X86_XSTATE, 1 << 16))
        except OSError as e:
            if e.errno != errno.ENODEV:
                raise
            _xstate_size = 0
    return _xstate_size


def has_xstate(tid: int) -> bool:
    return xstate_size(tid) > 0


def get_xstate(tid: int) -> bytes:
    """The xsave area (standard format; ptrace puts XCR0 in the first sw_reserved word)."""
    size = xstate_size(tid)
    if not size:
        raise OSError(errno.ENODEV, "no XSAVE on this CPU: use get_fpregs / get_fpstate")
    return getregset(tid, NT_X86_XSTATE, size)


def get_fpstate(tid: int) -> bytes:
    """The FPU state in the richest format available: the xsave area, or the 512-byte fxsave image."""
    return get_xstate(tid) if has_xstate(tid) else bytes(get_fpregs(tid))


def set_xstate(tid: int, data: bytes) -> None:
    setregset(tid, NT_X86_XSTATE, data)


def getsigmask(tid: int) -> int:
    m = ctypes.c_uint64()
    ptrace(GETSIGMASK, tid, 8, ctypes.addressof(m))
    return m.value


def setsigmask(tid: int, mask: int) -> None:
    """Note: the kernel also clears the task's pending "restore saved sigmask" (sigsuspend, ppoll)."""
    m = ctypes.c_uint64(mask)
    ptrace(SETSIGMASK, tid, 8, ctypes.addressof(m))


def getsiginfo(tid: int) -> Siginfo:
    si = Siginfo()
    ptrace(GETSIGINFO, tid, 0, ctypes.addressof(si))
    return si


def setsiginfo(tid: int, si: Siginfo) -> None:
    ptrace(SETSIGINFO, tid, 0, ctypes.addressof(si))


def peeksiginfo(tid: int, shared: bool = False, off: int = 0, nr: int = 64) -> list[Siginfo]:
    """Queued (not yet delivered) signals: the thread's private queue, or the process-wide one."""
    out: list[Siginfo] = []
    buf = (Siginfo * nr)()
    while True:
        args = PeeksiginfoArgs(off, PEEKSIGINFO_SHARED if shared else 0, nr)
        n = ptrace(PEEKSIGINFO, tid, ctypes.addressof(args), ctypes.addressof(buf))
        out.extend(Siginfo.from_buffer_copy(buf[i]) for i in range(n))
        if n < nr:
            return out
        off += n


def get_syscall_info(tid: int) -> SyscallInfo:
    info = SyscallInfo()
    ptrace(GET_SYSCALL_INFO, tid, ctypes.sizeof(info), ctypes.addressof(info))
    return info


def get_rseq_configuration(tid: int) -> RseqConfiguration | None:
    """The thread's registered rseq area, or None on kernels without the request (< 5.13)."""
    conf = RseqConfiguration()
    try:
        ptrace(GET_RSEQ_CONFIGURATION, tid, ctypes.sizeof(conf), ctypes.addressof(conf))
    except OSError as e:
        if e.errno == 5:  # EIO: unknown request
            return None
        raise
    return conf


def arch_prctl(tid: int, code: int, value: int = 0) -> int:
    """PTRACE_ARCH_PRCTL: ARCH_GET_FS/GS return the base; ARCH_SET_FS/GS set it to `value`."""
    if code in (ARCH_GET_FS, ARCH_GET_GS):
        v = ctypes.c_ulong()
        ptrace(ARCH_PRCTL, tid, ctypes.addressof(v), code)
        return v.value
    ptrace(ARCH_PRCTL, tid, value, code)
    return 0


def get_thread_area(tid: int, entry: int) -> UserDesc:
    d = UserDesc()
    ptrace(GET_THREAD_AREA, tid, entry, ctypes.addressof(d))
    return d


def seccomp_get_filter(tid: int, index: int) -> bytes:
    """The index-th classic-BPF seccomp filter of the task (CAP_SYS_ADMIN), as raw sock_filter[]."""
    n = ptrace(SECCOMP_GET_FILTER, tid, index, 0)
    buf = ctypes.create_string_buffer(n * 8)
    n = ptrace(SECCOMP_GET_FILTER, tid, index, ctypes.addressof(buf))
    return buf.raw[: n * 8]


# --- wait -----------------------------------------------------------------------------------------

SYSCALL_STOP = (0x80 | SIGTRAP) << 8 | 0x7F  # raw status of a TRACESYSGOOD syscall stop


class WaitStatus:
    """A decoded wait status (waitpid's int), including ptrace stop kinds."""

    __slots__ = ("pid", "status")

    def __init__(self, pid: int, status: int) -> None:
        self.pid = pid
        self.status = status

    exited = property(lambda s: os.WIFEXITED(s.status))
    exit_code = property(lambda s: os.WEXITSTATUS(s.status))
    signaled = property(lambda s: os.WIFSIGNALED(s.status))
    termsig = property(lambda s: os.WTERMSIG(s.status))
    stopped = property(lambda s: os.WIFSTOPPED(s.status))
    continued = property(lambda s: os.WIFCONTINUED(s.status))

    @property
    def gone(self) -> bool:
        return self.exited or self.signaled

    @property
    def stopsig(self) -> int:
        return os.WSTOPSIG(self.status) if self.stopped else 0

    @property
    def event(self) -> int:
        """PTRACE_EVENT_* of a ptrace event stop, else 0."""
        return self.status >> 16 if self.stopped else 0

    @property
    def syscall_stop(self) -> bool:
        return self.stopped and self.stopsig == 0x80 | SIGTRAP and self.event == 0

    @property
    def group_stop(self) -> bool:
        """A PTRACE_SEIZEd task in group-stop (reported as PTRACE_EVENT_STOP with the stop signal)."""
        return self.event == EVENT_STOP and self.stopsig in STOP_SIGNALS

    @property
    def interrupt_stop(self) -> bool:
        """PTRACE_EVENT_STOP caused by PTRACE_INTERRUPT (or a SEIZE/LISTEN notification)."""
        return self.event == EVENT_STOP and self.stopsig == SIGTRAP

    @property
    def signal_stop(self) -> bool:
        """A signal-delivery-stop: the tracee is about to get `stopsig`."""
        return self.stopped and self.event == 0 and not self.syscall_stop

    def __repr__(self) -> str:
        if self.exited:
            what = f"exited({self.exit_code})"
        elif self.signaled:
            what = f"killed({self.termsig})"
        elif self.syscall_stop:
            what = "syscall-stop"
        elif self.group_stop:
            what = f"group-stop({self.stopsig})"
        elif self.event:
            what = f"event-stop({self.event}, sig={self.stopsig})"
        elif self.stopped:
            what = f"signal-stop({self.stopsig})"
        else:
            what = f"status={self.status:#x}"
        return f"WaitStatus(pid={self.pid}, {what})"


def waitpid(pid: int, flags: int = WALL) -> WaitStatus:
    """waitpid(2) (__WALL by default so threads and non-children tracees are seen)."""
    p, st = os.waitpid(pid, flags)
    return WaitStatus(p, st)


def waitid(idtype: int, ident: int, options: int) -> os.waitid_result | None:
    """waitid(2); None with WNOHANG when nothing is ready. options may include WALL/WNOWAIT."""
    return os.waitid(idtype, ident, options)
