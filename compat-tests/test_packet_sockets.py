# SPDX-License-Identifier: MIT
"""Packet sockets, both directions: real `criu dump` -> `spice restore`, `spice dump` -> real
`criu restore` / `spice restore`, and `spice dump` writing them as criu does (crit equal). After a
restore the socket is still bound to loopback for IPv4, keeps PACKET_AUXDATA and its multicast
entry, and captures the datagram the process sends itself. A memory-mapped ring is refused."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import fdkinds
import harness
import pytest


def check_restored(info: harness.DumpInfo, pid: int) -> None:
    """aux and seen are constants of the workload's lines: the same after the restore."""
    assert pid == info.pid
    harness.assert_continues(info, pid, new_ticks=3)
    f = info.pre_dump["main"].fields
    assert (f["aux"], f["seen"]) == ("1", "1"), f


criu_dump, spice_dump = fdkinds.dump_fixtures("packets")


def test_criu_dump_restores_under_spice(criu_dump: harness.DumpInfo) -> None:
    fdkinds.restore_and_check(criu_dump, "spice", check_restored, times=2)


def test_spice_dump_writes_them_as_criu(crit_bin: Path, compat_tmp: Path) -> None:
    with fdkinds.dumped_by_both("packets", compat_tmp / "packets" / "both") as (_wl, theirs, ours):
        a = fdkinds.crit_files(crit_bin, theirs, "PACKETSK", "psk")
        assert a == fdkinds.crit_files(crit_bin, ours, "PACKETSK", "psk")
        assert [(e["type"], e["protocol"], e["aux_data"], len(e["mclist"])) for e in a] == [(2, 8, True, 1)], a


@pytest.mark.parametrize("tool", ["criu", "spice"])
def test_spice_dump_restores(spice_dump: harness.DumpInfo, tool: str) -> None:
    fdkinds.restore_and_check(spice_dump, tool, check_restored)


def test_a_ring_is_refused_and_the_process_runs_on(compat_tmp: Path) -> None:
    run = compat_tmp / "packets" / "ring"
    run.mkdir(parents=True)
    out = run / "packets.out"
    harness.make_subreaper()
    proc = subprocess.Popen([sys.executable, str(fdkinds.HERE / "packets.py"), str(out), "ring"], cwd=run,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        fdkinds.wait_for(lambda: out.exists() and b"seen=" in out.read_bytes(), 10, "the workload to start")
        fdkinds.assert_dump_refused(proc.pid, run, "a packet socket with a memory-mapped ring: not supported")
        ticks = len(out.read_bytes().splitlines())
        fdkinds.wait_for(lambda: len(out.read_bytes().splitlines()) > ticks + 2, 10, "the workload to go on")
    finally:
        harness.kill_pids([proc.pid])
