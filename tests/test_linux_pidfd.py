# SPDX-License-Identifier: MIT
"""linux.pidfd and linux.kcmp on real processes."""

from __future__ import annotations

import os
import select
import signal
import threading

from progs import Target

from spice_criu.linux import kcmp, pidfd


def test_getfd_and_send_signal():
    with Target.prog("blocker", "sleep", "5000") as t:
        t.wait_for("ready")
        pfd = pidfd.pidfd_open(t.pid)
        try:
            fd = pidfd.pidfd_getfd(pfd, 1)  # the target's stdout, here
            os.write(fd, b"written through pidfd_getfd\n")
            t.wait_for("^written through pidfd_getfd$")
            assert kcmp.same(os.getpid(), t.pid, kcmp.KCMP_FILE, fd, 1)
            assert not kcmp.same(os.getpid(), t.pid, kcmp.KCMP_FILE, fd, 0)
            os.close(fd)
            assert select.select([pfd], [], [], 0)[0] == []
            pidfd.pidfd_send_signal(pfd, signal.SIGTERM)
            assert select.select([pfd], [], [], 5)[0] == [pfd]  # readable once it exited
            assert t.wait() == -signal.SIGTERM
        finally:
            os.close(pfd)
        fd = None


def test_getfd_by_pid():
    with Target.prog("blocker", "sleep", "5000") as t:
        t.wait_for("ready")
        fd = pidfd.getfd(t.pid, 1)
        assert os.readlink(f"/proc/self/fd/{fd}") == os.readlink(f"/proc/{t.pid}/fd/1")
        os.close(fd)


def test_kcmp_objects():
    me = os.getpid()
    fd = os.dup(0)
    try:
        assert kcmp.same(me, me, kcmp.KCMP_FILE, 0, fd)
    finally:
        os.close(fd)
    with Target.prog("threads", "2") as t:
        t.wait_for("ready")
        tids = sorted(int(x) for x in os.listdir(f"/proc/{t.pid}/task"))
        for kind in (kcmp.KCMP_VM, kcmp.KCMP_FILES, kcmp.KCMP_FS, kcmp.KCMP_SIGHAND):
            assert kcmp.same(tids[0], tids[1], kind)
            assert not kcmp.same(me, t.pid, kind)
        assert kcmp.kcmp(me, t.pid, kcmp.KCMP_VM) in (1, 2)
    done = threading.Event()
    th = threading.Thread(target=done.wait)
    th.start()
    try:
        assert kcmp.same(me, th.native_id, kcmp.KCMP_VM)
    finally:
        done.set()
        th.join()
