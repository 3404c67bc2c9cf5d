# SPDX-License-Identifier: MIT
"""kcmp(2): do two tasks share a kernel object (files, mm, fs, sighand, io, sysvsem, an fd, an epoll target)?

Dump uses it to tell shared objects apart (CRIU's kid tree); restore uses it to verify sharing.
"""

from __future__ import annotations

import ctypes

from .syscalls import NR, syscall

KCMP_FILE = 0
KCMP_VM = 1
KCMP_FILES = 2
KCMP_FS = 3
KCMP_SIGHAND = 4
KCMP_IO = 5
KCMP_SYSVSEM = 6
KCMP_EPOLL_TFD = 7


class KcmpEpollSlot(ctypes.Structure):
    _fields_ = [("efd", ctypes.c_uint32), ("tfd", ctypes.c_uint32), ("toff", ctypes.c_uint32)]


def kcmp(pid1: int, pid2: int, kind: int, idx1: int = 0, idx2: int = 0) -> int:
    """0 equal, 1 less, 2 greater, 3 not equal (ordering is obfuscated by the kernel)."""
    return syscall(NR.kcmp, pid1, pid2, kind, idx1, idx2)


def same(pid1: int, pid2: int, kind: int, idx1: int = 0, idx2: int = 0) -> bool:
    return kcmp(pid1, pid2, kind, idx1, idx2) == 0


def same_epoll_target(pid1: int, fd1: int, pid2: int, epfd: int, tfd: int, toff: int = 0) -> bool:
    slot = KcmpEpollSlot(epfd, tfd, toff)
    return kcmp(pid1, pid2, KCMP_EPOLL_TFD, fd1, ctypes.addressof(slot)) == 0
