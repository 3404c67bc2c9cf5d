# SPDX-License-Identifier: MIT
"""userfaultfd(2): UFFDIO_API/REGISTER/COPY/ZEROPAGE/WAKE/WRITEPROTECT/CONTINUE and struct uffd_msg.

Used to record a restored process's working set and to serve its pages lazily. A uffd acts on the
mm of the process that created it, so one created inside a target (inject.Remote) and pulled out
with pidfd_getfd lets this process handle the target's faults.
"""

from __future__ import annotations

import ctypes
import errno
import os

from .syscalls import NR, fresh, libc, raise_errno, syscall

UFFD_API = 0xAA
UFFD_USER_MODE_ONLY = 1

UFFDIO_REGISTER_MODE_MISSING = 1 << 0
UFFDIO_REGISTER_MODE_WP = 1 << 1
UFFDIO_REGISTER_MODE_MINOR = 1 << 2

UFFDIO_COPY_MODE_DONTWAKE = 1 << 0
UFFDIO_COPY_MODE_WP = 1 << 1
UFFDIO_ZEROPAGE_MODE_DONTWAKE = 1 << 0
UFFDIO_WRITEPROTECT_MODE_WP = 1 << 0
UFFDIO_WRITEPROTECT_MODE_DONTWAKE = 1 << 1

UFFD_EVENT_PAGEFAULT = 0x12
UFFD_EVENT_FORK = 0x13
UFFD_EVENT_REMAP = 0x14
UFFD_EVENT_REMOVE = 0x15
UFFD_EVENT_UNMAP = 0x16

UFFD_PAGEFAULT_FLAG_WRITE = 1 << 0
UFFD_PAGEFAULT_FLAG_WP = 1 << 1
UFFD_PAGEFAULT_FLAG_MINOR = 1 << 2

UFFD_FEATURE_PAGEFAULT_FLAG_WP = 1 << 0
UFFD_FEATURE_EVENT_FORK = 1 << 1
UFFD_FEATURE_EVENT_REMAP = 1 << 2
UFFD_FEATURE_EVENT_REMOVE = 1 << 3
UFFD_FEATURE_MISSING_HUGETLBFS = 1 << 4
UFFD_FEATURE_MISSING_SHMEM = 1 << 5
UFFD_FEATURE_EVENT_UNMAP = 1 << 6
UFFD_FEATURE_SIGBUS = 1 << 7
UFFD_FEATURE_THREAD_ID = 1 << 8
UFFD_FEATURE_MINOR_HUGETLBFS = 1 << 9
UFFD_FEATURE_MINOR_SHMEM = 1 << 10
UFFD_FEATURE_EXACT_ADDRESS = 1 << 11
UFFD_FEATURE_WP_HUGETLBFS_SHMEM = 1 << 12
UFFD_FEATURE_WP_UNPOPULATED = 1 << 13  # 6.4+
UFFD_FEATURE_POISON = 1 << 14  # 6.6+
UFFD_FEATURE_WP_ASYNC = 1 << 15  # 6.7+
UFFD_FEATURE_MOVE = 1 << 16  # 6.8+


def _ioc(direction: int, nr: int, size: int) -> int:
    return direction << 30 | size << 16 | UFFD_API << 8 | nr


class UffdioApi(ctypes.Structure):
    _fields_ = [("api", ctypes.c_uint64), ("features", ctypes.c_uint64), ("ioctls", ctypes.c_uint64)]


class UffdioRange(ctypes.Structure):
    _fields_ = [("start", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class UffdioRegister(ctypes.Structure):
    _fields_ = [("range", UffdioRange), ("mode", ctypes.c_uint64), ("ioctls", ctypes.c_uint64)]


class UffdioCopy(ctypes.Structure):
    _fields_ = [("dst", ctypes.c_uint64), ("src", ctypes.c_uint64), ("len", ctypes.c_uint64),
                ("mode", ctypes.c_uint64), ("copy", ctypes.c_int64)]


class UffdioZeropage(ctypes.Structure):
    _fields_ = [("range", UffdioRange), ("mode", ctypes.c_uint64), ("zeropage", ctypes.c_int64)]


class UffdioWriteprotect(ctypes.Structure):
    _fields_ = [("range", UffdioRange), ("mode", ctypes.c_uint64)]


class UffdioContinue(ctypes.Structure):
    _fields_ = [("range", UffdioRange), ("mode", ctypes.c_uint64), ("mapped", ctypes.c_int64)]


class _Pagefault(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("flags", ctypes.c_uint64), ("address", ctypes.c_uint64), ("ptid", ctypes.c_uint32)]


class _Remap(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("from_", ctypes.c_uint64), ("to", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class _Remove(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("start", ctypes.c_uint64), ("end", ctypes.c_uint64)]


class _MsgArg(ctypes.Union):
    _pack_ = 1
    _fields_ = [("pagefault", _Pagefault), ("fork_ufd", ctypes.c_uint32), ("remap", _Remap),
                ("remove", _Remove), ("reserved", ctypes.c_uint64 * 3)]


class UffdMsg(ctypes.Structure):
    """struct uffd_msg (32 bytes, packed)."""

    _pack_ = 1
    _fields_ = [("event", ctypes.c_uint8), ("reserved1", ctypes.c_uint8), ("reserved2", ctypes.c_uint16),
                ("reserved3", ctypes.c_uint32), ("arg", _MsgArg)]


assert ctypes.sizeof(UffdMsg) == 32

UFFDIO_API = _ioc(3, 0x3F, ctypes.sizeof(UffdioApi))
UFFDIO_REGISTER = _ioc(3, 0x00, ctypes.sizeof(UffdioRegister))
UFFDIO_UNREGISTER = _ioc(2, 0x01, ctypes.sizeof(UffdioRange))
UFFDIO_WAKE = _ioc(2, 0x02, ctypes.sizeof(UffdioRange))
UFFDIO_COPY = _ioc(3, 0x03, ctypes.sizeof(UffdioCopy))
UFFDIO_ZEROPAGE = _ioc(3, 0x04, ctypes.sizeof(UffdioZeropage))
UFFDIO_WRITEPROTECT = _ioc(3, 0x06, ctypes.sizeof(UffdioWriteprotect))
UFFDIO_CONTINUE = _ioc(3, 0x07, ctypes.sizeof(UffdioContinue))
USERFAULTFD_IOC_NEW = 0xAA00  # _IO(0xAA, 0) on /dev/userfaultfd (6.1+)

_ioctl = fresh(libc, "ioctl", ctypes.c_int, [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p])


def _do(fd: int, req: int, arg: ctypes.Structure, what: str) -> None:
    if _ioctl(fd, req, ctypes.addressof(arg)) != 0:
        raise_errno(what)


def userfaultfd(flags: int = os.O_CLOEXEC | os.O_NONBLOCK) -> int:
    """A new uffd for this process's mm: the syscall, else /dev/userfaultfd (when the syscall is
    restricted by vm.unprivileged_userfaultfd)."""
    try:
        return syscall(NR.userfaultfd, flags)
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOSYS):
            raise
    dev = os.open("/dev/userfaultfd", os.O_RDWR | os.O_CLOEXEC)
    try:
        fd = _ioctl(dev, USERFAULTFD_IOC_NEW, flags)
        if fd < 0:
            raise_errno("USERFAULTFD_IOC_NEW")
        return fd
    finally:
        os.close(dev)


def api(fd: int, features: int = 0) -> UffdioApi:
    """The UFFDIO_API handshake (must come first); returns the granted features and ioctls."""
    a = UffdioApi(UFFD_API, features, 0)
    _do(fd, UFFDIO_API, a, "UFFDIO_API")
    return a


def register(fd: int, start: int, length: int, mode: int = UFFDIO_REGISTER_MODE_MISSING) -> int:
    """Register a range; returns the bitmask of ioctls usable on it."""
    r = UffdioRegister(UffdioRange(start, length), mode, 0)
    _do(fd, UFFDIO_REGISTER, r, "UFFDIO_REGISTER")
    return r.ioctls


def unregister(fd: int, start: int, length: int) -> None:
    _do(fd, UFFDIO_UNREGISTER, UffdioRange(start, length), "UFFDIO_UNREGISTER")


def wake(fd: int, start: int, length: int) -> None:
    _do(fd, UFFDIO_WAKE, UffdioRange(start, length), "UFFDIO_WAKE")


def copy(fd: int, dst: int, src: int, length: int, mode: int = 0) -> int:
    """Atomically fill [dst, dst+length) in the uffd's mm from this process's src; bytes copied."""
    c = UffdioCopy(dst, src, length, mode, 0)
    if _ioctl(fd, UFFDIO_COPY, ctypes.addressof(c)) != 0:
        if c.copy > 0:
            return c.copy
        raise_errno("UFFDIO_COPY")
    return c.copy


def zeropage(fd: int, start: int, length: int, mode: int = 0) -> int:
    z = UffdioZeropage(UffdioRange(start, length), mode, 0)
    if _ioctl(fd, UFFDIO_ZEROPAGE, ctypes.addressof(z)) != 0:
        if z.zeropage > 0:
            return z.zeropage
        raise_errno("UFFDIO_ZEROPAGE")
    return z.zeropage


def writeprotect(fd: int, start: int, length: int, protect: bool = True, wake_: bool = True) -> None:
    mode = (UFFDIO_WRITEPROTECT_MODE_WP if protect else 0) | (0 if wake_ else UFFDIO_WRITEPROTECT_MODE_DONTWAKE)
    _do(fd, UFFDIO_WRITEPROTECT, UffdioWriteprotect(UffdioRange(start, length), mode), "UFFDIO_WRITEPROTECT")


def read_msgs(fd: int, max_msgs: int = 64) -> list[UffdMsg]:
    """Pending events (empty list if none and the fd is non-blocking)."""
    try:
        data = os.read(fd, 32 * max_msgs)
    except BlockingIOError:
        return []
    return [UffdMsg.from_buffer_copy(data, i) for i in range(0, len(data) - 31, 32)]
