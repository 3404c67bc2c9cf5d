# SPDX-License-Identifier: MIT
"""Another process's memory: process_vm_readv/writev scatter lists, and /proc/PID/mem as fallback.

process_vm_* copies straight between address spaces (no ptrace needed beyond PTRACE_MODE_ATTACH) but
respects page protections; /proc/PID/mem also writes read-only pages (FOLL_FORCE) and works where
process_vm_* is unavailable, at the cost of an open file and one syscall per contiguous range.
"""

from __future__ import annotations

import ctypes
import errno
import os

from .syscalls import libc, raise_errno

TYPE_CHECKING = False  # typing costs ~10 ms of start-up; annotations are strings
if TYPE_CHECKING:
    from collections.abc import Sequence

    Ranges = Sequence[tuple[int, int]]
    Buffer = bytes | bytearray | memoryview | ctypes.Array

IOV_MAX = 1024


class Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


# No argtypes: ctypes converts an int and prebuilt pointer objects fastest that way.
_readv = libc._FuncPtr(("process_vm_readv", libc))
_readv.restype = ctypes.c_ssize_t
_writev = libc._FuncPtr(("process_vm_writev", libc))
_writev.restype = ctypes.c_ssize_t


def _local(buf: Buffer, writable: bool) -> tuple[int, object]:
    """Address of buf's memory (no copy), and the object that keeps it alive."""
    if isinstance(buf, ctypes.Array):
        return ctypes.addressof(buf), buf
    if isinstance(buf, bytes):
        if writable:
            raise TypeError("bytes are read-only")
        keep = ctypes.c_char_p(buf)
        return ctypes.cast(keep, ctypes.c_void_p).value or 0, (keep, buf)
    arr = (ctypes.c_char * len(buf)).from_buffer(buf)  # bytearray / writable memoryview
    return ctypes.addressof(arr), arr


def _vm(fn: ctypes._CFuncPtr, pid: int, local_addr: int, remote: Ranges) -> int:
    """One or more process_vm_* calls; returns bytes transferred (stops at the first short one)."""
    if len(remote) == 1:
        addr, want = remote[0]
        ret = fn(pid, ctypes.byref(Iovec(local_addr, want)), 1, ctypes.byref(Iovec(addr, want)), 1, 0)
        if ret < 0:
            raise_errno(f"process_vm {pid}")
        return ret
    total = 0
    for i in range(0, len(remote), IOV_MAX):
        chunk = remote[i : i + IOV_MAX]
        want = sum(n for _, n in chunk)
        riov = (Iovec * len(chunk))(*[Iovec(a, n) for a, n in chunk])
        ret = fn(pid, ctypes.byref(Iovec(local_addr + total, want)), 1, riov, len(chunk), 0)
        if ret < 0:
            if total:
                return total
            raise_errno(f"process_vm {pid}")
        total += ret
        if ret < want:
            return total
    return total


def readv_into(pid: int, remote: Ranges, buf: bytearray | memoryview | ctypes.Array) -> int:
    """Read the remote ranges, concatenated, into buf; returns the number of bytes read
    (short if a range is unmapped: reading stops there, as process_vm_readv does)."""
    if sum(n for _, n in remote) > len(buf):
        raise ValueError("buffer too small")
    if not remote:
        return 0
    addr, _keep = _local(buf, True)
    return _vm(_readv, pid, addr, remote)


def read_to(pid: int, local_addr: int, remote: Ranges) -> int:
    """Gather the remote ranges into the memory at local_addr (e.g. a mapping of ours that stays
    put: no buffer export per call); returns bytes read, short at the first unreadable range."""
    return _vm(_readv, pid, local_addr, remote) if remote else 0


def read_into(pid: int, addr: int, buf: bytearray | memoryview | ctypes.Array) -> None:
    """Fill buf from addr in pid; OSError(EFAULT) if any byte is not readable."""
    local, _keep = _local(buf, True)
    if _vm(_readv, pid, local, ((addr, len(buf)),)) != len(buf):
        raise OSError(errno.EFAULT, f"short read at {addr:#x} in {pid}")


def read(pid: int, addr: int, n: int) -> bytes:
    buf = ctypes.create_string_buffer(n)
    if _vm(_readv, pid, ctypes.addressof(buf), ((addr, n),)) != n:
        raise OSError(errno.EFAULT, f"short read at {addr:#x} in {pid}")
    return buf.raw


def readv(pid: int, remote: Ranges) -> list[bytes]:
    """Read several ranges in one syscall (per IOV_MAX); OSError(EFAULT) on a short read."""
    buf = bytearray(sum(n for _, n in remote))
    if readv_into(pid, remote, buf) != len(buf):
        raise OSError(errno.EFAULT, f"short read in {pid}")
    out, off = [], 0
    for _, n in remote:
        out.append(bytes(buf[off : off + n]))
        off += n
    return out


def writev(pid: int, remote: Ranges, data: Buffer) -> int:
    """Scatter data (concatenated) to the remote ranges; returns bytes written (short on a fault)."""
    if sum(n for _, n in remote) != len(data):
        raise ValueError("data length does not match the ranges")
    if not remote:
        return 0
    if isinstance(data, memoryview) and data.readonly:
        data = bytes(data)
    addr, _keep = _local(data, False)
    return _vm(_writev, pid, addr, remote)


def write_from(pid: int, local_addr: int, remote: Ranges) -> int:
    """Scatter the bytes at local_addr (e.g. a mapped file) to the remote ranges; bytes written."""
    return _vm(_writev, pid, local_addr, remote) if remote else 0


def write(pid: int, addr: int, data: Buffer) -> None:
    if isinstance(data, memoryview) and data.readonly:
        data = bytes(data)
    local, _keep = _local(data, False)
    if _vm(_writev, pid, local, ((addr, len(data)),)) != len(data):
        raise OSError(errno.EFAULT, f"short write at {addr:#x} in {pid}")


class ProcMem:
    """/proc/PID/mem: reads and writes, including pages the task cannot write itself."""

    def __init__(self, pid: int, writable: bool = True) -> None:
        self.pid = pid
        self.fd = os.open(f"/proc/{pid}/mem", (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC)

    def read(self, addr: int, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            chunk = os.pread(self.fd, n - len(out), addr + len(out))
            if not chunk:
                raise OSError(errno.EFAULT, f"short read at {addr + len(out):#x} in {self.pid}")
            out += chunk
        return bytes(out)

    def write(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        mv = memoryview(data)
        done = 0
        while done < len(mv):
            n = os.pwrite(self.fd, mv[done:], addr + done)
            if n <= 0:
                raise OSError(errno.EFAULT, f"short write at {addr + done:#x} in {self.pid}")
            done += n

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> ProcMem:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_any(pid: int, addr: int, n: int) -> bytes:
    """process_vm_readv, falling back to /proc/PID/mem (e.g. PROT_NONE-free but ptrace-only pages)."""
    try:
        return read(pid, addr, n)
    except OSError as e:
        if e.errno not in (errno.EFAULT, errno.ENOSYS, errno.EPERM):
            raise
    with ProcMem(pid, writable=False) as m:
        return m.read(addr, n)


def write_any(pid: int, addr: int, data: bytes | bytearray | memoryview) -> None:
    """process_vm_writev, falling back to /proc/PID/mem (which can also write read-only pages)."""
    try:
        write(pid, addr, data)
        return
    except OSError as e:
        if e.errno not in (errno.EFAULT, errno.ENOSYS, errno.EPERM):
            raise
    with ProcMem(pid) as m:
        m.write(addr, data)
