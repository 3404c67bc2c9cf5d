# SPDX-License-Identifier: MIT
"""restore.stub: the program restored tasks start as, checked by running it."""

from __future__ import annotations

import errno
import os
import signal
import struct
import time

import pytest

from spice_criu.linux import clone3
from spice_criu.restore import stub


def test_elf_headers():
    img = stub.elf()
    assert img[:4] == b"\x7fELF" and img[4:6] == b"\x02\x01"  # 64-bit, little endian
    e_type, e_machine, _, e_entry, e_phoff = struct.unpack_from("<HHIQQ", img, 16)
    assert (e_type, e_machine, e_phoff) == (2, 62, 64)
    phnum = struct.unpack_from("<H", img, 56)[0]
    phdrs = [struct.unpack_from("<IIQQQQQQ", img, 64 + 56 * i) for i in range(phnum)]
    load = [p for p in phdrs if p[0] == 1]
    assert len(load) == 1 and load[0][3] == stub.BASE and load[0][5] == len(img)
    assert load[0][1] == 5  # R+X, no W
    stack = [p for p in phdrs if p[0] == 0x6474E551]
    assert stack and stack[0][1] == 6  # the stack is not executable
    assert stub.BASE <= e_entry < stub.BASE + len(img)
    assert img[stub.SYSCALL_SITE - stub.BASE:][:2] == b"\x0f\x05"  # the injection site is a syscall


def _wait_state(pid: int, want: str) -> str:
    for _ in range(200):
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        if state == want:
            return state
        time.sleep(0.01)
    return state


def test_stub_sleeps_in_pause_with_one_page_of_its_own():
    fd = stub.program()
    try:
        pid = clone3.spawn_exec(fd, [stub.NAME.encode()])
    finally:
        os.close(fd)
    try:
        assert _wait_state(pid, "S") == "S"
        with open(f"/proc/{pid}/status") as f:  # spawn_exec: every signal blocked from the start
            blocked = next(int(line.split()[1], 16) for line in f if line.startswith("SigBlk:"))
        assert blocked == (1 << 64) - 1 - (1 << 8) - (1 << 18)  # all but SIGKILL and SIGSTOP
        with open(f"/proc/{pid}/syscall") as f:
            assert f.read().split()[0] == "34"  # pause
        assert os.readlink(f"/proc/{pid}/exe").startswith(f"/memfd:{stub.NAME}")
        with open(f"/proc/{pid}/maps") as f:
            maps = [line.split() for line in f]
        names = sorted(m[5] if len(m) > 5 else "" for m in maps)
        assert [n for n in names if n.startswith("/memfd")] == [f"/memfd:{stub.NAME}"]
        assert {"[stack]", "[vdso]", "[vvar]"} <= set(names)
        assert len(maps) <= 6  # nothing of the restorer: its page, stack, vdso, vvar (+ vvar_vclock, vsyscall)
        assert int(maps[0][0].split("-")[0], 16) == stub.BASE
        fds = os.listdir(f"/proc/{pid}/fd")
        assert str(fd) not in fds  # the memfd was close-on-exec
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def _runs_the_stub(fd: int) -> str:
    """Start the stub from fd, check it sleeps in pause() running exactly that file; its exe link."""
    pid = clone3.spawn_exec(fd, [stub.NAME.encode()])
    try:
        assert _wait_state(pid, "S") == "S"
        with open(f"/proc/{pid}/syscall") as f:
            assert f.read().split()[0] == "34"  # pause
        a, b = os.stat(f"/proc/{pid}/exe"), os.fstat(fd)
        assert (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
        return os.readlink(f"/proc/{pid}/exe")
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def test_stub_where_memfds_are_noexec_by_default():
    """vm.memfd_noexec = 1 (Linux 6.3+): memfds are noexec unless asked for with MFD_EXEC."""
    knob = "/proc/sys/vm/memfd_noexec"
    if not os.path.exists(knob):
        pytest.skip("this kernel has no vm.memfd_noexec (before 6.3): every memfd is executable")
    with open(knob) as f:
        old = f.read().strip()
    try:
        with open(knob, "w") as f:
            f.write("1")
        fd = stub.program()
        try:
            assert _runs_the_stub(fd).startswith(f"/memfd:{stub.NAME}")
        finally:
            os.close(fd)
    finally:
        with open(knob, "w") as f:
            f.write(old)


def test_stub_from_a_temporary_file_where_memfds_cannot_be_executed(monkeypatch):
    """vm.memfd_noexec = 2 refuses executable memfds (EACCES): the stub goes to an O_TMPFILE."""

    def refused(name: str, flags: int = 0) -> int:
        raise PermissionError(errno.EACCES, "memfd_create refused")

    monkeypatch.setattr(stub.os, "memfd_create", refused)
    fd = stub.program()
    try:
        exe = _runs_the_stub(fd)
        assert exe.endswith("(deleted)") and not exe.startswith("/memfd:")
    finally:
        os.close(fd)
