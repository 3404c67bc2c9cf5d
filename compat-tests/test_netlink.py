# SPDX-License-Identifier: MIT
"""Netlink sockets, both directions: real `criu dump` -> `spice restore`, `spice dump` -> real
`criu restore` / `spice restore`, and `spice dump` writing them as criu does (crit equal). After a
restore the route socket has its portid and groups and still gets answers from the kernel; the
never-bound generic socket is still unbound. A socket in a group past 32 is refused, as criu does."""

from __future__ import annotations

from pathlib import Path

import fdkinds
import harness
import pytest
from harness import assert_continues


def check_restored(info: harness.DumpInfo, pid: int) -> None:
    """addr, member, generic and lo are constants of the workload's lines: the same after the restore."""
    assert pid == info.pid
    assert_continues(info, pid, new_ticks=3)
    f = info.pre_dump["main"].fields
    assert (f["addr"], f["member"], f["generic"], f["lo"]) == (f"{pid}/11", "11,0", "0", "1"), f


criu_dump, spice_dump = fdkinds.dump_fixtures("netlinks")


def test_criu_dump_restores_under_spice(criu_dump: harness.DumpInfo) -> None:
    fdkinds.restore_and_check(criu_dump, "spice", check_restored, times=2)


def test_spice_dump_writes_them_as_criu(crit_bin: Path, compat_tmp: Path) -> None:
    with fdkinds.dumped_by_both("netlinks", compat_tmp / "netlink" / "both") as (wl, theirs, ours):
        a = fdkinds.crit_files(crit_bin, theirs, "NETLINKSK", "nlsk")
        assert a == fdkinds.crit_files(crit_bin, ours, "NETLINKSK", "nlsk")
        route = next(e for e in a if e["protocol"] == 0)
        assert route["portid"] == wl.pid and route["groups"] == [0x11], route


@pytest.mark.parametrize("tool", ["criu", "spice"])
def test_spice_dump_restores(spice_dump: harness.DumpInfo, tool: str) -> None:
    fdkinds.restore_and_check(spice_dump, tool, check_restored)


def test_a_group_past_32_is_refused_and_the_process_runs_on(compat_tmp: Path) -> None:
    run = compat_tmp / "netlink" / "past-32"
    run.mkdir(parents=True)
    (run / "join-33").touch()
    wl = harness.start_workload("netlinks", run)
    try:
        fdkinds.assert_dump_refused(wl.pid, run, "netlink socket in more than 32 groups: not supported")
        assert_continues(wl, wl.pids, new_ticks=2)
    finally:
        wl.kill()
