# SPDX-License-Identifier: MIT
"""linux.clone3: a Python-continuable fork through clone3, with a chosen PID (set_tid)."""

from __future__ import annotations

import ctypes
import errno
import os
import random
import threading

import pytest

from spice_criu.linux import clone3
from spice_criu.linux.syscalls import NR, libc, syscall


def free_pid() -> int:
    with open("/proc/sys/kernel/pid_max") as f:
        pid_max = int(f.read())
    rnd = random.Random(os.getpid())
    while True:
        pid = rnd.randrange(pid_max // 2, pid_max)
        if not os.path.exists(f"/proc/{pid}"):
            return pid


def robust_list() -> tuple[int, int]:
    head, size = ctypes.c_void_p(), ctypes.c_size_t()
    syscall(NR.get_robust_list, 0, ctypes.addressof(head), ctypes.addressof(size))
    return head.value or 0, size.value


def test_struct_layout():
    assert ctypes.sizeof(clone3.CloneArgs) == 88
    assert clone3.CloneArgs.set_tid.offset == 64 and clone3.CloneArgs.cgroup.offset == 80
    a = clone3.make_args(clone3.CLONE_PARENT, 0, [5, 6], set_tid_addr=0x1000, cgroup_fd=7)
    assert (a.flags, a.set_tid, a.set_tid_size, a.cgroup) == (clone3.CLONE_PARENT | clone3.CLONE_INTO_CGROUP,
                                                              0x1000, 2, 7)
    assert clone3.pack_set_tid([5, 6]) == b"\x05\0\0\0\x06\0\0\0"
    with pytest.raises(ValueError):
        clone3.make_args(set_tid=[5])


def test_fork_with_set_tid_gets_that_pid():
    libc.pthread_self.restype = ctypes.c_void_p
    head = robust_list()
    for _ in range(20):
        want = free_pid()
        try:
            pid = clone3.fork(set_tid=[want])
        except FileExistsError:
            continue  # raced with another process taking it
        if pid == 0:
            ok = 0
            ok |= (os.getpid() != want) << 0
            tid_cache = ctypes.c_int32.from_address(libc.pthread_self() + clone3._TID_OFFSET).value
            ok |= (tid_cache != want) << 1
            ok |= (robust_list() != head) << 2
            ok |= (threading.get_native_id() != want) << 3
            os._exit(ok)
        assert pid == want
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        return
    pytest.fail("no free pid found")


def test_fork_without_set_tid_and_errors():
    pid = clone3.fork()
    if pid == 0:
        os._exit(3)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 3
    with pytest.raises(OSError) as e:
        clone3.fork(set_tid=[os.getpid()])
    assert e.value.errno == errno.EEXIST
    with pytest.raises(ValueError):
        clone3.fork(flags=clone3.CLONE_VM)
    stop = threading.Event()
    th = threading.Thread(target=stop.wait)
    th.start()
    try:
        with pytest.raises(RuntimeError):
            clone3.fork()
    finally:
        stop.set()
        th.join()


def test_raw_clone3_in_a_pid_namespace():
    """CLONE_NEWPID child is pid 1 inside; set_tid with two levels picks both pids."""
    outer = free_pid()
    pid = clone3.fork(flags=clone3.CLONE_NEWPID, set_tid=[1, outer])
    if pid == 0:
        os._exit(0 if os.getpid() == 1 else 1)
    assert pid == outer
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
