# SPDX-License-Identifier: MIT
"""Raw sockets (ICMP over IPv4, ICMPv6 over IPv6), both directions: real `criu dump` -> `spice
restore`, `spice dump` -> real `criu restore` / `spice restore`, and `spice dump` writing them as
criu does (crit equal). After a restore the raw socket keeps its type filter (on loopback it would
otherwise see its own echo requests) and still gets the replies to the pings it sends."""

from __future__ import annotations

from pathlib import Path

import fdkinds
import harness
import pytest
from harness import assert_continues

#: the type filter as each workload reports it (echo requests blocked), and as crit shows it
FILTERS = {"rawicmp": ("100", [0x100]), "rawicmp6": ("0,0,0,0,1,0,0,0", [0, 0, 0, 0, 1, 0, 0, 0])}
PROTOS = {"rawicmp": 1, "rawicmp6": 58}


def check_restored(info: harness.DumpInfo, pid: int) -> None:
    """filter and pong are constants of the workload's lines: the same after the restore."""
    assert pid == info.pid
    assert_continues(info, pid, new_ticks=3)
    f = info.pre_dump["main"].fields
    assert (f["filter"], f["pong"]) == (FILTERS[info.name][0], "1"), f


criu_dump, spice_dump = fdkinds.dump_fixtures("rawicmp", "rawicmp6")


def test_criu_dump_restores_under_spice(criu_dump: harness.DumpInfo) -> None:
    fdkinds.restore_and_check(criu_dump, "spice", check_restored, times=2)


@pytest.mark.parametrize("name", ["rawicmp", "rawicmp6"])
def test_spice_dump_writes_them_as_criu(name: str, crit_bin: Path, compat_tmp: Path) -> None:
    with fdkinds.dumped_by_both(name, compat_tmp / name / "both") as (_wl, theirs, ours):
        a = fdkinds.crit_files(crit_bin, theirs, "INETSK", "isk")
        assert a == fdkinds.crit_files(crit_bin, ours, "INETSK", "isk")
        assert [(e["type"], e["proto"], e["ip_opts"]["raw"]) for e in a] == [
            ("RAW", PROTOS[name], {"icmpv_filter": FILTERS[name][1]})], a


@pytest.mark.parametrize("tool", ["criu", "spice"])
def test_spice_dump_restores(spice_dump: harness.DumpInfo, tool: str) -> None:
    fdkinds.restore_and_check(spice_dump, tool, check_restored)
