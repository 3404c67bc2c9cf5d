# SPDX-License-Identifier: MIT
"""Inet sockets sock_diag does not list (never bound or connected; a TCP socket only bound), both
directions: real `criu dump` -> `spice restore`, `spice dump` -> real `criu restore` / `spice
restore`, and `spice dump` writing them as criu does (crit equal). After a restore the sockets keep
their options and bound port, and the unbound TCP socket can still connect and send."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import fdkinds
import harness
import pytest
from harness import assert_continues


def check_restored(info: harness.DumpInfo, pid: int) -> None:
    """Continues with the same sockets (nodelay, bport and types are constants of its lines); the
    never-connected TCP socket connects to a listener of the test and sends the token."""
    assert pid == info.pid
    assert_continues(info, pid, new_ticks=3)
    fields = info.pre_dump["main"].fields
    assert fields["nodelay"] == "1" and fields["types"] == (
        "AF_INET/SOCK_STREAM,AF_INET6/SOCK_STREAM,AF_INET/SOCK_DGRAM,AF_INET/SOCK_STREAM"), fields
    with socket.socket() as lst:
        lst.bind(("127.0.0.1", 0))
        lst.listen(1)
        lst.settimeout(harness.scaled(10))
        (info.rundir / "connect-to").write_text(str(lst.getsockname()[1]))
        os.kill(pid, signal.SIGUSR1)
        conn, _ = lst.accept()
        with conn:
            conn.settimeout(harness.scaled(10))
            assert conn.makefile().readline().strip() == fields["token"]


criu_dump, spice_dump = fdkinds.dump_fixtures("inetidle")


def test_criu_dump_restores_under_spice(criu_dump: harness.DumpInfo) -> None:
    fdkinds.restore_and_check(criu_dump, "spice", check_restored, times=2)


def test_spice_dump_writes_them_as_criu(crit_bin: Path, compat_tmp: Path) -> None:
    with fdkinds.dumped_by_both("inetidle", compat_tmp / "inet-idle" / "both") as (wl, theirs, ours):
        a = fdkinds.crit_files(crit_bin, theirs, "INETSK", "isk")
        assert a == fdkinds.crit_files(crit_bin, ours, "INETSK", "isk")
        assert sorted(e["src_port"] for e in a)[-1] == fdkinds.last_field(wl, "bport")
        assert {e["state"] for e in a} == {"CLOSE"}


@pytest.mark.parametrize("tool", ["criu", "spice"])
def test_spice_dump_restores(spice_dump: harness.DumpInfo, tool: str) -> None:
    fdkinds.restore_and_check(spice_dump, tool, check_restored)
