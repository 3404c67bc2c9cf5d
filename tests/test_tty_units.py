# SPDX-License-Identifier: MIT
"""dump/tty.Ptys (the queued data of pty pairs) and restore/tty.check_sessions, on real ptys."""

from __future__ import annotations

import fcntl
import os
import tty

import pytest

from spice_criu.dump.tty import PtyQueue, Ptys
from spice_criu.errors import SpiceError
from spice_criu.restore.tty import check_sessions


class Images:
    def __init__(self) -> None:
        self.added: list = []

    def add(self, name: str, magic: str, msg) -> None:
        self.added.append((name, magic, msg))


def _pair():
    m, s = os.openpty()
    tty.setraw(s)
    index = int(os.ttyname(s).rsplit("/", 1)[1])
    ptys = Ptys()
    ptys.add(PtyQueue(index * 2 + 1, index, os.dup(m), fcntl.fcntl(m, fcntl.F_GETFL)))
    ptys.add(PtyQueue(index * 2, index, os.dup(s), fcntl.fcntl(s, fcntl.F_GETFL)))
    return m, s, ptys


def test_queued_data_is_read_and_given_back_with_the_blocking_mode():
    m, s, ptys = _pair()
    try:
        os.write(m, b"to the slave")
        os.write(s, b"to the master")
        images = Images()
        ptys.dump_queued(images)
        assert sorted(bytes(e.data) for _, _, e in images.added) == [b"to the master", b"to the slave"]
        assert fcntl.fcntl(m, fcntl.F_GETFL) & os.O_NONBLOCK  # read without blocking...
        ptys.write_back()
        assert not fcntl.fcntl(m, fcntl.F_GETFL) & os.O_NONBLOCK  # ...and blocking again
        assert not fcntl.fcntl(s, fcntl.F_GETFL) & os.O_NONBLOCK
        assert os.read(s, 100) == b"to the slave" and os.read(m, 100) == b"to the master"
    finally:
        ptys.close()
        os.close(m)
        os.close(s)


def test_a_failed_give_back_still_restores_the_blocking_mode():
    """More than the terminal takes (the write stops short, or fails with EAGAIN): logged, and the
    ends are blocking again all the same."""
    m, s, ptys = _pair()
    try:
        ptys.dump_queued(Images())
        ptys.pairs = [tuple(ptys.ends.values())]
        for e in ptys.ends.values():
            e.data = b"x" * (1 << 20)
        ptys.write_back()
        assert not fcntl.fcntl(m, fcntl.F_GETFL) & os.O_NONBLOCK
        assert not fcntl.fcntl(s, fcntl.F_GETFL) & os.O_NONBLOCK
    finally:
        ptys.close()
        os.close(m)
        os.close(s)


def test_check_sessions_wants_the_leader_of_every_controlling_terminal():
    state = {"tty": {"cttys": {41: (3, 41)}}}
    check_sessions(state, {41, 7})
    with pytest.raises(SpiceError, match="pty 3 is the controlling terminal of session 41: no task found with sid 41"):
        check_sessions(state, {7})
