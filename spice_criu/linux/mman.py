# SPDX-License-Identifier: MIT
"""Memory-management constants and calls: mmap flags, madvise, memfd_create, MAP_* / PROT_* values."""

from __future__ import annotations

import ctypes
import os

from .syscalls import NR, fresh, libc, raise_errno, syscall

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")

PROT_NONE = 0
PROT_READ = 1
PROT_WRITE = 2
PROT_EXEC = 4
PROT_GROWSDOWN = 0x01000000

MAP_SHARED = 0x01
MAP_PRIVATE = 0x02
MAP_SHARED_VALIDATE = 0x03
MAP_FIXED = 0x10
MAP_ANONYMOUS = 0x20
MAP_GROWSDOWN = 0x0100
MAP_DENYWRITE = 0x0800
MAP_EXECUTABLE = 0x1000
MAP_LOCKED = 0x2000
MAP_NORESERVE = 0x4000
MAP_POPULATE = 0x8000
MAP_NONBLOCK = 0x10000
MAP_STACK = 0x20000
MAP_HUGETLB = 0x40000
MAP_SYNC = 0x80000
MAP_FIXED_NOREPLACE = 0x100000
MAP_FAILED = (1 << 64) - 1

MREMAP_MAYMOVE = 1
MREMAP_FIXED = 2
MREMAP_DONTUNMAP = 4

MADV_NORMAL = 0
MADV_RANDOM = 1
MADV_SEQUENTIAL = 2
MADV_WILLNEED = 3
MADV_DONTNEED = 4
MADV_FREE = 8
MADV_REMOVE = 9
MADV_DONTFORK = 10
MADV_DOFORK = 11
MADV_MERGEABLE = 12
MADV_UNMERGEABLE = 13
MADV_HUGEPAGE = 14
MADV_NOHUGEPAGE = 15
MADV_DONTDUMP = 16
MADV_DODUMP = 17
MADV_WIPEONFORK = 18
MADV_KEEPONFORK = 19
MADV_COLD = 20
MADV_PAGEOUT = 21
MADV_POPULATE_READ = 22
MADV_POPULATE_WRITE = 23

MFD_CLOEXEC = 1
MFD_ALLOW_SEALING = 2
MFD_HUGETLB = 4
MFD_NOEXEC_SEAL = 8  # 6.3+
MFD_EXEC = 0x10  # 6.3+

_mmap = fresh(libc, "mmap", ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                                              ctypes.c_int, ctypes.c_long])
_munmap = fresh(libc, "munmap", ctypes.c_int, [ctypes.c_void_p, ctypes.c_size_t])
_madvise = fresh(libc, "madvise", ctypes.c_int, [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int])
_mprotect = fresh(libc, "mprotect", ctypes.c_int, [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int])


def mmap(addr: int, length: int, prot: int, flags: int, fd: int = -1, offset: int = 0) -> int:
    """mmap(2) in this process; returns the address (Python's mmap module hides it)."""
    ret = _mmap(addr or None, length, prot, flags, fd, offset)
    if ret is None or ret == MAP_FAILED:
        raise_errno("mmap")
    return ret


def munmap(addr: int, length: int) -> None:
    if _munmap(addr, length) != 0:
        raise_errno("munmap")


def mprotect(addr: int, length: int, prot: int) -> None:
    if _mprotect(addr, length, prot) != 0:
        raise_errno("mprotect")


def madvise(addr: int, length: int, advice: int) -> None:
    if _madvise(addr, length, advice) != 0:
        raise_errno("madvise")


def machine_code(code: bytes, restype: type | None, *argtypes: type) -> ctypes._CFuncPtr:
    """A C-callable function made of `code` (x86-64, SysV calling convention), in a page of its
    own mapped read+exec (written while still read+write, never both writable and executable)."""
    size = page_align(len(code))
    page = mmap(0, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)
    ctypes.memmove(page, code, len(code))
    mprotect(page, size, PROT_READ | PROT_EXEC)
    return ctypes.CFUNCTYPE(restype, *argtypes)(page)


def memfd_create(name: str, flags: int = MFD_CLOEXEC) -> int:
    return os.memfd_create(name, flags)


def page_align(n: int) -> int:
    return (n + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


def mincore(addr: int, length: int) -> bytes:
    """One byte per page (bit 0: resident)."""
    vec = ctypes.create_string_buffer(page_align(length) // PAGE_SIZE)
    syscall(NR.mincore, addr, length, ctypes.addressof(vec))
    return vec.raw
