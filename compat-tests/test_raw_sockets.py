# SPDX-License-Identifier: MIT
"""Raw IPv4 sockets, both directions: real `criu dump` -> `spice restore`, `spice dump` -> real
`criu restore` / `spice restore`, and `spice dump` writing them as criu does (crit equal). After a
restore the raw ICMP socket keeps its type filter (on loopback it would otherwise see its own echo
requests) and still gets the replies to the pings it sends. A raw IPv6 socket is refused by name."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import fdkinds
import harness
import pytest
from harness import assert_continues


def check_restored(info: harness.DumpInfo, pid: int) -> None:
    """filter and pong are constants of the workload's lines: the same after the restore."""
    assert pid == info.pid
    assert_continues(info, pid, new_ticks=3)
    f = info.pre_dump["main"].fields
    assert (f["filter"], f["pong"]) == ("100", "1"), f


criu_dump, spice_dump = fdkinds.dump_fixtures("rawicmp")


def test_criu_dump_restores_under_spice(criu_dump: harness.DumpInfo) -> None:
    fdkinds.restore_and_check(criu_dump, "spice", check_restored, times=2)


def test_spice_dump_writes_them_as_criu(crit_bin: Path, compat_tmp: Path) -> None:
    with fdkinds.dumped_by_both("rawicmp", compat_tmp / "raw" / "both") as (_wl, theirs, ours):
        a = fdkinds.crit_files(crit_bin, theirs, "INETSK", "isk")
        assert a == fdkinds.crit_files(crit_bin, ours, "INETSK", "isk")
        assert [(e["type"], e["proto"], e["ip_opts"]["raw"]) for e in a] == [("RAW", 1, {"icmpv_filter": [0x100]})]


@pytest.mark.parametrize("tool", ["criu", "spice"])
def test_spice_dump_restores(spice_dump: harness.DumpInfo, tool: str) -> None:
    fdkinds.restore_and_check(spice_dump, tool, check_restored)


def test_raw_ipv6_is_refused_and_the_process_runs_on(compat_tmp: Path) -> None:
    run = compat_tmp / "raw" / "v6"
    run.mkdir(parents=True)
    harness.make_subreaper()
    code = ("import socket, time; s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6); "
            "open('ready', 'w').close(); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=run, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        fdkinds.wait_for(lambda: (run / "ready").exists(), 10, "the process to open its socket")
        fdkinds.assert_dump_refused(proc.pid, run, "raw IPv6 sockets are not supported")
        assert harness.process_state(proc.pid) == "S"
    finally:
        harness.kill_pids([proc.pid])
