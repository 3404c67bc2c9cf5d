# SPDX-License-Identifier: MIT
"""pidfd_open(2), pidfd_getfd(2), pidfd_send_signal(2): race-free handles on processes.

pidfd_getfd duplicates a file descriptor out of another process (PTRACE_MODE_ATTACH_REALCREDS),
which is how dump reads a task's fds without a parasite.
"""

from __future__ import annotations

import ctypes
import os

from .signals import Siginfo
from .syscalls import NR, syscall

PIDFD_NONBLOCK = os.O_NONBLOCK
PIDFD_THREAD = os.O_EXCL  # 6.9+: a pidfd for a thread, not a thread group
PIDFD_SIGNAL_THREAD = 1 << 0  # 6.9+ pidfd_send_signal flags
PIDFD_SIGNAL_THREAD_GROUP = 1 << 1
PIDFD_SIGNAL_PROCESS_GROUP = 1 << 2


def pidfd_open(pid: int, flags: int = 0) -> int:
    return syscall(NR.pidfd_open, pid, flags)


def pidfd_getfd(pidfd: int, targetfd: int, flags: int = 0) -> int:
    """A copy (O_CLOEXEC) in this process of the target's fd `targetfd`."""
    return syscall(NR.pidfd_getfd, pidfd, targetfd, flags)


def pidfd_send_signal(pidfd: int, sig: int, info: Siginfo | None = None, flags: int = 0) -> None:
    syscall(NR.pidfd_send_signal, pidfd, sig, 0 if info is None else ctypes.addressof(info), flags)


def getfd(pid: int, targetfd: int) -> int:
    """pidfd_getfd by pid (opens and closes a pidfd)."""
    pfd = pidfd_open(pid)
    try:
        return pidfd_getfd(pfd, targetfd)
    finally:
        os.close(pfd)
