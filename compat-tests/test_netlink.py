# SPDX-License-Identifier: MIT
"""Netlink sockets, both directions: real `criu dump` -> `spice restore`, `spice dump` -> real
`criu restore` / `spice restore`, and `spice dump` writing them as criu does (crit equal). After a
restore the route socket has its portid and groups and still gets answers from the kernel; the
never-bound generic socket is still unbound. A socket in a group past 32 is refused, as criu does."""

from __future__ import annotations

from pathlib import Path

import fdkinds  # noqa: F401 - registers the netlinks workload
import harness
import pytest
from harness import assert_continues, criu_restore, kill_restored
from spice import spice, spice_dumper, spice_restore


def check_restored(info: harness.DumpInfo, pid: int) -> None:
    """addr, member, generic and lo are constants of the workload's lines: the same after the restore."""
    assert pid == info.pid
    assert_continues(info, pid, new_ticks=3)
    f = info.pre_dump["main"].fields
    assert (f["addr"], f["member"], f["generic"], f["lo"]) == (f"{pid}/11", "11,0", "0", "1"), f


@pytest.fixture(scope="module")
def criu_dump(criu_bin: Path, compat_tmp: Path) -> harness.DumpInfo:
    wl = harness.start_workload("netlinks", compat_tmp / "netlink" / "criu")
    return harness.dump_workload(wl, wl.rundir / "images")


@pytest.fixture(scope="module")
def spice_dump(criu_bin: Path, compat_tmp: Path) -> harness.DumpInfo:
    wl = harness.start_workload("netlinks", compat_tmp / "netlink" / "spice")
    return harness.dump_workload(wl, wl.rundir / "images", dumper=spice_dumper)


def test_criu_dump_restores_under_spice(criu_dump: harness.DumpInfo) -> None:
    for _ in range(2):
        pid = spice_restore(criu_dump.images_dir)
        check_restored(criu_dump, pid)
        kill_restored(criu_dump, pid)


def test_spice_dump_writes_them_as_criu(crit_bin: Path, compat_tmp: Path) -> None:
    with fdkinds.dumped_by_both("netlinks", compat_tmp / "netlink" / "both") as (wl, theirs, ours):
        a = fdkinds.crit_files(crit_bin, theirs, "NETLINKSK", "nlsk")
        assert a == fdkinds.crit_files(crit_bin, ours, "NETLINKSK", "nlsk")
        route = next(e for e in a if e["protocol"] == 0)
        assert route["portid"] == wl.pid and route["groups"] == [0x11], route


@pytest.mark.parametrize("tool", ["criu", "spice"])
def test_spice_dump_restores(spice_dump: harness.DumpInfo, tool: str) -> None:
    info = spice_dump
    pid = criu_restore(info.images_dir) if tool == "criu" else spice_restore(info.images_dir)
    check_restored(info, pid)
    kill_restored(info, pid)


def test_a_group_past_32_is_refused_and_the_process_runs_on(compat_tmp: Path) -> None:
    run = compat_tmp / "netlink" / "past-32"
    run.mkdir(parents=True)
    (run / "join-33").touch()
    wl = harness.start_workload("netlinks", run)
    try:
        p = spice("dump", "-t", str(wl.pid), "-D", str(run), "-o", "dump.log", check=False)
        assert p.returncode == 1
        err = p.stderr.strip()
        assert err.startswith("Error (spice/dump): ") and "\n" not in err, err
        assert "netlink socket" in err and "more than 32 groups" in err, err
        assert_continues(wl, wl.pids, new_ticks=2)
    finally:
        wl.kill()
