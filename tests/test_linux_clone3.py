# SPDX-License-Identifier: MIT
"""linux.clone3: clone3 with a chosen PID (set_tid), and spawn_exec (vfork-style clone3 + exec)."""

from __future__ import annotations

import ctypes
import errno
import os
import random

import pytest

from spice_criu.linux import clone3


def free_pid() -> int:
    with open("/proc/sys/kernel/pid_max") as f:
        pid_max = int(f.read())
    rnd = random.Random(os.getpid())
    while True:
        pid = rnd.randrange(pid_max // 2, pid_max)
        if not os.path.exists(f"/proc/{pid}"):
            return pid


def test_struct_layout():
    assert ctypes.sizeof(clone3.CloneArgs) == 88
    assert clone3.CloneArgs.set_tid.offset == 64 and clone3.CloneArgs.cgroup.offset == 80
    a = clone3.make_args(clone3.CLONE_PARENT, 0, [5, 6], set_tid_addr=0x1000, cgroup_fd=7)
    assert (a.flags, a.set_tid, a.set_tid_size, a.cgroup) == (clone3.CLONE_PARENT | clone3.CLONE_INTO_CGROUP,
                                                              0x1000, 2, 7)
    assert clone3.pack_set_tid([5, 6]) == b"\x05\0\0\0\x06\0\0\0"
    with pytest.raises(ValueError):
        clone3.make_args(set_tid=[5])


def test_spawn_exec_in_a_pid_namespace():
    """CLONE_NEWPID child is pid 1 inside; set_tid with two levels picks both pids."""
    outer = free_pid()
    fd = _exe_fd(b'#!/bin/sh\n[ "$$" = 1 ]\n')
    try:
        pid = clone3.spawn_exec(fd, [b"sh"], flags=clone3.CLONE_NEWPID, set_tid=[1, outer])
    finally:
        os.close(fd)
    assert pid == outer
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0


def _sigmask() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1], 16) for line in f if line.startswith("SigBlk:"))


def _exe_fd(script: bytes) -> int:
    """A script in a memfd; not close-on-exec, or the interpreter could not open /dev/fd/N."""
    fd = os.memfd_create("spawn-test", 0)
    os.write(fd, script)
    return fd


@pytest.mark.parametrize("share_vm", [True, False])
def test_spawn_exec_runs_the_program_with_the_chosen_pid(tmp_path, share_vm: bool):
    """vfork-style clone3 + execveat: the child runs the program in the fd (here a shell script
    writing its pid, argv and environment) with the PID asked for; our signal mask is untouched.
    Without CLONE_VM (share_vm=False: a copy of our page tables) the same."""
    out = tmp_path / "out"
    fd = _exe_fd(b'#!/bin/sh\necho "$$ $1 env=$(env | grep -v ^PWD= | grep -c .)" > "$2"\n')
    mask = _sigmask()
    try:
        for _ in range(20):
            want = free_pid()
            try:
                pid = clone3.spawn_exec(fd, [b"sh", b"arg1", str(out).encode()], set_tid=[want], share_vm=share_vm)
            except FileExistsError:
                continue
            break
        else:
            pytest.fail("no free pid found")
        assert pid == want
        assert _sigmask() == mask
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
        assert out.read_text().split() == [str(want), "arg1", "env=0"]
    finally:
        os.close(fd)


def test_spawn_exec_errors():
    with pytest.raises(OSError) as e:
        clone3.spawn_exec(0, [b"x"], set_tid=[os.getpid()])
    assert e.value.errno == errno.EEXIST
    with pytest.raises(ValueError):
        clone3.spawn_exec(0, [b"x"], flags=clone3.CLONE_VM)
    nul = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
    try:  # not executable: the exec fails in the child, which exits 127
        pid = clone3.spawn_exec(nul, [b"x"])
    finally:
        os.close(nul)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 127
