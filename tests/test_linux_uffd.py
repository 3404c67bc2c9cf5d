# SPDX-License-Identifier: MIT
"""linux.uffd: missing-page faults served with UFFDIO_COPY/ZEROPAGE, in this process and in a
target whose uffd was created inside it (inject) and pulled out with pidfd_getfd."""

from __future__ import annotations

import ctypes
import os
import select
import threading

from progs import Target, seize_stopped

from spice_criu.inject import Remote
from spice_criu.linux import pidfd, uffd
from spice_criu.linux import ptrace as pt
from spice_criu.linux.mman import MAP_ANONYMOUS, MAP_PRIVATE, PAGE_SIZE, PROT_READ, PROT_WRITE, mmap, munmap
from spice_criu.linux.syscalls import NR


def wait_fault(fd: int) -> uffd.UffdMsg:
    assert select.select([fd], [], [], 5)[0] == [fd]
    msgs = uffd.read_msgs(fd)
    assert len(msgs) == 1 and msgs[0].event == uffd.UFFD_EVENT_PAGEFAULT
    return msgs[0]


def test_struct_sizes_and_ioctl_numbers():
    assert ctypes.sizeof(uffd.UffdMsg) == 32 and uffd.UffdMsg.arg.offset == 8
    assert uffd.UFFDIO_API == 0xC018AA3F and uffd.UFFDIO_REGISTER == 0xC020AA00
    assert uffd.UFFDIO_COPY == 0xC028AA03 and uffd.UFFDIO_ZEROPAGE == 0xC020AA04
    assert uffd.UFFDIO_UNREGISTER == 0x8010AA01 and uffd.UFFDIO_WAKE == 0x8010AA02


def test_missing_faults_in_this_process():
    fd = uffd.userfaultfd()
    region = mmap(0, 2 * PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)
    try:
        api = uffd.api(fd)
        assert api.ioctls & (1 << 0x3F) or api.api == uffd.UFFD_API
        ioctls = uffd.register(fd, region, 2 * PAGE_SIZE)
        assert ioctls & (1 << 0x03) and ioctls & (1 << 0x04)  # COPY and ZEROPAGE allowed
        got = (ctypes.c_char * 16)()
        got2 = (ctypes.c_char * 16)()

        def touch() -> None:  # ctypes.memmove releases the GIL while the fault blocks
            ctypes.memmove(got, region + 8, 16)
            ctypes.memmove(got2, region + PAGE_SIZE, 16)

        th = threading.Thread(target=touch)
        th.start()
        msg = wait_fault(fd)
        assert msg.arg.pagefault.address & ~(PAGE_SIZE - 1) == region
        assert not msg.arg.pagefault.flags & uffd.UFFD_PAGEFAULT_FLAG_WRITE
        src = ctypes.create_string_buffer(b"page served by uffd".ljust(PAGE_SIZE, b"."), PAGE_SIZE)
        assert uffd.copy(fd, region, ctypes.addressof(src), PAGE_SIZE) == PAGE_SIZE
        msg = wait_fault(fd)
        assert msg.arg.pagefault.address == region + PAGE_SIZE
        assert uffd.zeropage(fd, region + PAGE_SIZE, PAGE_SIZE) == PAGE_SIZE
        th.join(5)
        assert not th.is_alive()
        assert got.raw == src.raw[8:24] and got2.raw == b"\0" * 16
        uffd.unregister(fd, region, 2 * PAGE_SIZE)
    finally:
        munmap(region, 2 * PAGE_SIZE)
        os.close(fd)


TOUCH_TARGET = """
import ctypes, mmap, sys
libc = ctypes.CDLL(None)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
addr = libc.mmap(None, 4096, 3, 0x22, -1, 0)
print(addr, flush=True)
buf = (ctypes.c_char * 8)()
for line in sys.stdin:
    ctypes.memmove(buf, addr + 100, 8)
    print("read", buf.raw.hex(), flush=True)
"""


def test_uffd_created_in_a_target_serves_its_faults():
    rfd, wfd = os.pipe()
    with Target.python(TOUCH_TARGET, stdin=rfd) as t:
        os.close(rfd)
        t.fds.append(wfd)
        addr = int(t.wait_for(r"^(\d+)$").group(1))
        seize_stopped(t.pid)
        with Remote(t.pid) as r:
            remote_fd = r.check(NR.userfaultfd, os.O_CLOEXEC | os.O_NONBLOCK)
            fd = pidfd.getfd(t.pid, remote_fd)
            r.check(NR.close, remote_fd)
        pt.detach(t.pid)
        try:
            uffd.api(fd)
            uffd.register(fd, addr, PAGE_SIZE)
            os.write(wfd, b"touch\n")
            msg = wait_fault(fd)
            assert msg.arg.pagefault.address & ~(PAGE_SIZE - 1) == addr
            src = ctypes.create_string_buffer(bytes(range(256)) * 16, PAGE_SIZE)
            uffd.copy(fd, addr, ctypes.addressof(src), PAGE_SIZE)
            assert t.wait_for(r"^read (\w+)").group(1) == bytes(range(100, 108)).hex()
        finally:
            os.close(fd)
