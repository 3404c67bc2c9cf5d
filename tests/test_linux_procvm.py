# SPDX-License-Identifier: MIT
"""linux.procvm: another process's memory through process_vm_readv/writev and /proc/PID/mem."""

from __future__ import annotations

import errno
import hashlib
import os
import time

import pytest
from progs import Target

from spice_criu.linux import procvm
from spice_criu.linux.mman import PAGE_SIZE

BUFFER_TARGET = """
import ctypes, hashlib, mmap, sys
n = 4 << 20
buf = (ctypes.c_ubyte * n).from_buffer(bytearray(bytes(range(256)) * (n // 256)))
ro = mmap.mmap(-1, 4096, prot=mmap.PROT_READ)
ro_addr = ctypes.addressof(ctypes.c_char.from_buffer_copy(b"x"))  # placeholder, replaced below
libc = ctypes.CDLL(None)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
ro_addr = libc.mmap(None, 8192, 1, 0x22, -1, 0)       # PROT_READ, MAP_PRIVATE|MAP_ANONYMOUS
libc.munmap(ctypes.c_void_p(ro_addr + 4096), 4096)      # a hole right after it
print(ctypes.addressof(buf), ro_addr, flush=True)
for line in sys.stdin:
    if line.startswith("sum"):
        print("sum", hashlib.sha256(bytes(buf)).hexdigest(), flush=True)
    elif line.startswith("ro"):
        print("ro", ctypes.string_at(ro_addr, 16).hex(), flush=True)
"""


@pytest.fixture
def target():
    rfd, wfd = os.pipe()
    t = Target.python(BUFFER_TARGET, stdin=rfd)
    os.close(rfd)
    t.fds.append(wfd)
    m = t.wait_for(r"^(\d+) (\d+)")
    t.buf, t.ro = int(m.group(1)), int(m.group(2))
    t.expect = bytearray(bytes(range(256)) * (16384))
    yield t
    t.kill()


def ask(t: Target, cmd: str, prefix: str) -> str:
    n = sum(1 for ln in t.lines() if ln.startswith(prefix))
    os.write(t.fds[0], cmd.encode() + b"\n")
    return t.wait_for(f"^{prefix} (\\S+)", count=n + 1).group(1)


def test_read_write_both_ways(target):
    t = target
    assert procvm.read(t.pid, t.buf, 4 << 20) == bytes(t.expect)
    with procvm.ProcMem(t.pid) as m:
        assert m.read(t.buf + 1000, 3000) == bytes(t.expect[1000:4000])
    # scatter: three ranges in one call, in any order
    ranges = [(t.buf + 5, 10), (t.buf + 3 * PAGE_SIZE, 100), (t.buf + 7, 1)]
    assert procvm.readv(t.pid, ranges) == [bytes(t.expect[o - t.buf : o - t.buf + n]) for o, n in ranges]
    procvm.write(t.pid, t.buf + 10, b"A" * 20)
    procvm.writev(t.pid, [(t.buf + 100, 3), (t.buf + 200, 2)], b"BBBCC")
    with procvm.ProcMem(t.pid) as m:
        m.write(t.buf + 4096, b"D" * 5000)
    t.expect[10:30] = b"A" * 20
    t.expect[100:103] = b"BBB"
    t.expect[200:202] = b"CC"
    t.expect[4096:9096] = b"D" * 5000
    assert ask(t, "sum", "sum") == hashlib.sha256(t.expect).hexdigest()
    assert procvm.read(t.pid, t.buf, 4 << 20) == bytes(t.expect)


def test_read_only_pages_and_faults(target):
    t = target
    with pytest.raises(OSError) as e:
        procvm.write(t.pid, t.ro, b"nope")
    assert e.value.errno == errno.EFAULT
    procvm.write_any(t.pid, t.ro, b"forced via mem!!")  # /proc/PID/mem writes with FOLL_FORCE
    assert ask(t, "ro", "ro") == b"forced via mem!!".hex()
    assert procvm.read_any(t.pid, t.ro, 16) == b"forced via mem!!"
    # a range running into the hole: short count, or EFAULT for the strict helpers
    buf = bytearray(2 * PAGE_SIZE)
    assert procvm.readv_into(t.pid, [(t.ro, 2 * PAGE_SIZE)], buf) == PAGE_SIZE
    assert procvm.readv_into(t.pid, [(t.ro, 16), (t.ro + PAGE_SIZE, 16), (t.ro, 16)], buf) == 16
    with pytest.raises(OSError) as e:
        procvm.read(t.pid, t.ro + PAGE_SIZE, 8)
    assert e.value.errno == errno.EFAULT
    with pytest.raises(ValueError):
        procvm.readv_into(t.pid, [(t.ro, 100)], bytearray(10))


def test_many_ranges_beyond_iov_max(target):
    t = target
    ranges = [(t.buf + i * 3, 2) for i in range(3000)]  # > IOV_MAX: split into several calls
    got = procvm.readv(t.pid, ranges)
    assert got == [bytes(t.expect[i * 3 : i * 3 + 2]) for i in range(3000)]


def test_throughput_is_reported(target):
    """Not a timed assertion: prints MiB/s for the record (see the bench script)."""
    t = target
    buf = bytearray(4 << 20)
    start = time.perf_counter()
    for _ in range(20):
        procvm.read_into(t.pid, t.buf, buf)
    dt = time.perf_counter() - start
    assert buf == t.expect
    print(f"process_vm_readv: {dt / 80 * 1e6:.0f} us/MiB")
