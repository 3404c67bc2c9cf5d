# SPDX-License-Identifier: MIT
"""The libc handle, raw syscall(2), x86_64 syscall numbers and errno helpers.

Everything in spice_criu.linux raises OSError(errno) on failure, the way the os module does.
"""

from __future__ import annotations

import ctypes
import os

TYPE_CHECKING = False  # typing costs ~10 ms of start-up; annotations are strings
if TYPE_CHECKING:
    from typing import NoReturn

libc = ctypes.CDLL(None, use_errno=True)

c_long = ctypes.c_long
c_ulong = ctypes.c_ulong


def fresh(lib: ctypes.CDLL, name: str, restype: type, argtypes: list[type]) -> ctypes._CFuncPtr:
    """A private function pointer for `name` (argtypes of shared libc attributes would clash)."""
    fn = lib._FuncPtr((name, lib))
    fn.restype = restype
    fn.argtypes = argtypes
    return fn


_syscall = fresh(libc, "syscall", c_long, [c_long] * 7)


class NR:
    """x86_64 syscall numbers (arch/x86/entry/syscalls/syscall_64.tbl)."""

    read = 0
    write = 1
    open = 2
    close = 3
    stat = 4
    fstat = 5
    poll = 7
    lseek = 8
    mmap = 9
    mprotect = 10
    munmap = 11
    brk = 12
    rt_sigaction = 13
    rt_sigprocmask = 14
    rt_sigreturn = 15
    ioctl = 16
    pread64 = 17
    pwrite64 = 18
    readv = 19
    writev = 20
    pipe = 22
    select = 23
    sched_yield = 24
    mremap = 25
    msync = 26
    mincore = 27
    madvise = 28
    dup = 32
    dup2 = 33
    pause = 34
    nanosleep = 35
    getitimer = 36
    alarm = 37
    setitimer = 38
    getpid = 39
    socket = 41
    connect = 42
    accept = 43
    sendmsg = 46
    recvmsg = 47
    bind = 49
    listen = 50
    getsockname = 51
    getpeername = 52
    socketpair = 53
    setsockopt = 54
    getsockopt = 55
    clone = 56
    fork = 57
    vfork = 58
    execve = 59
    exit = 60
    wait4 = 61
    kill = 62
    uname = 63
    fcntl = 72
    flock = 73
    getcwd = 79
    chdir = 80
    fchdir = 81
    readlink = 89
    umask = 95
    getrlimit = 97
    getrusage = 98
    ptrace = 101
    getuid = 102
    getgid = 104
    setuid = 105
    setgid = 106
    geteuid = 107
    getegid = 108
    setpgid = 109
    getppid = 110
    setsid = 112
    getgroups = 115
    setgroups = 116
    setresuid = 117
    getresuid = 118
    setresgid = 119
    getresgid = 120
    getpgid = 121
    setfsuid = 122
    setfsgid = 123
    getsid = 124
    capget = 125
    capset = 126
    rt_sigpending = 127
    rt_sigtimedwait = 128
    rt_sigqueueinfo = 129
    rt_sigsuspend = 130
    sigaltstack = 131
    personality = 135
    getpriority = 140
    setpriority = 141
    sched_getparam = 143
    sched_setscheduler = 144
    sched_getscheduler = 145
    prctl = 157
    arch_prctl = 158
    setrlimit = 160
    chroot = 161
    gettid = 186
    futex = 202
    sched_setaffinity = 203
    sched_getaffinity = 204
    getdents64 = 217
    set_tid_address = 218
    restart_syscall = 219
    timer_create = 222
    timer_settime = 223
    timer_gettime = 224
    timer_getoverrun = 225
    timer_delete = 226
    clock_gettime = 228
    clock_nanosleep = 230
    exit_group = 231
    epoll_wait = 232
    epoll_ctl = 233
    tgkill = 234
    mbind = 237
    set_mempolicy = 238
    get_mempolicy = 239
    waitid = 247
    inotify_add_watch = 254
    inotify_rm_watch = 255
    openat = 257
    readlinkat = 267
    pselect6 = 270
    ppoll = 271
    unshare = 272
    set_robust_list = 273
    get_robust_list = 274
    epoll_pwait = 281
    signalfd = 282
    timerfd_create = 283
    eventfd = 284
    fallocate = 285
    timerfd_settime = 286
    timerfd_gettime = 287
    signalfd4 = 289
    eventfd2 = 290
    epoll_create1 = 291
    dup3 = 292
    pipe2 = 293
    inotify_init1 = 294
    preadv = 295
    pwritev = 296
    rt_tgsigqueueinfo = 297
    prlimit64 = 302
    open_by_handle_at = 304
    setns = 308
    process_vm_readv = 310
    process_vm_writev = 311
    kcmp = 312
    seccomp = 317
    getrandom = 318
    memfd_create = 319
    userfaultfd = 323
    membarrier = 324
    statx = 332
    rseq = 334
    pidfd_send_signal = 424
    pidfd_open = 434
    clone3 = 435
    close_range = 436
    pidfd_getfd = 438
    process_madvise = 440
    futex_waitv = 449
    map_shadow_stack = 453


# -errno values the kernel uses internally for syscall restart (include/linux/errno.h);
# userspace (and a ptrace tracer) sees them in ax while a task sits in a signal stop.
ERESTARTSYS = 512
ERESTARTNOINTR = 513
ERESTARTNOHAND = 514
ERESTART_RESTARTBLOCK = 516
RESTART_ERRNOS = frozenset((ERESTARTSYS, ERESTARTNOINTR, ERESTARTNOHAND, ERESTART_RESTARTBLOCK))


_fstatfs = fresh(libc, "fstatfs", ctypes.c_int, [ctypes.c_int, ctypes.c_void_p])


def fs_type(fd: int) -> int:
    """The f_type (filesystem magic) of the filesystem an fd is on, from fstatfs(2)."""
    buf = ctypes.create_string_buffer(120)  # struct statfs; f_type is its first long
    check(_fstatfs(fd, buf), "fstatfs")
    return ctypes.c_long.from_buffer(buf).value


def raise_errno(what: str = "", errnum: int | None = None) -> NoReturn:
    """Raise OSError for errno (default: ctypes' saved errno), like os.* functions do."""
    e = ctypes.get_errno() if errnum is None else errnum
    if what:
        raise OSError(e, f"{os.strerror(e)} ({what})")
    raise OSError(e, os.strerror(e))


def check(ret: int, what: str = "") -> int:
    """libc convention: -1 means failure with errno set."""
    if ret == -1:
        raise_errno(what)
    return ret


def syscall(nr: int, *args: int) -> int:
    """Raw syscall(2) via libc: returns the result, raising OSError on failure."""
    a = args + (0,) * (6 - len(args))
    ret = _syscall(nr, *a)
    if ret == -1:
        raise_errno(f"syscall {nr}")
    return ret


def kernel_ret(ret: int, what: str = "") -> int:
    """Kernel convention (a raw return value, as seen in a tracee's ax): -4095..-1 are -errno."""
    if ret >= 1 << 63:
        ret -= 1 << 64
    if -4096 < ret < 0:
        raise_errno(what, -ret)
    return ret


def signed64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def unsigned64(v: int) -> int:
    return v & 0xFFFF_FFFF_FFFF_FFFF


def kernel_version() -> tuple[int, int]:
    rel = os.uname().release
    parts = rel.split(".")
    return int(parts[0]), int("".join(ch for ch in parts[1] if ch.isdigit()) or 0)
