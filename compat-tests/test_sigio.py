# SPDX-License-Identifier: MIT
"""Signal-driven I/O (O_ASYNC, F_SETOWN, F_SETSIG), both directions: real `criu dump` -> `spice
restore`, `spice dump` -> real `criu restore` / `spice restore`. As criu's rst_file_params() does,
a restore gives each pipe, socket and regular file its owner (a process or a process group), its
signal and its O_ASYNC flag back (open(2) ignores O_ASYNC: only fcntl sets it), so the signals
keep coming: the sigio workload waits for one per fd every tick and writes FAIL without it."""

from __future__ import annotations

import fdkinds
import harness
import pytest
from harness import assert_continues


def check_restored(info: harness.DumpInfo, pid: int) -> None:
    assert pid == info.pid
    assert_continues(info, list(info.pids), new_ticks=3)
    fields = info.pre_dump["main"].fields
    assert fields["owners"] == f"{pid}/-{pid}/{pid}", fields  # the workload leads its own group
    assert fields["async_"] == "1/1", fields
    for key in ("rt", "io"):
        assert fdkinds.last_field(info, key) > int(fields[key]) + 2, key


criu_dump, spice_dump = fdkinds.dump_fixtures("sigio")


def test_criu_dump_restores_under_spice(criu_dump: harness.DumpInfo) -> None:
    fdkinds.restore_and_check(criu_dump, "spice", check_restored, times=2)


@pytest.mark.parametrize("tool", ["criu", "spice"])
def test_spice_dump_restores(spice_dump: harness.DumpInfo, tool: str) -> None:
    fdkinds.restore_and_check(spice_dump, tool, check_restored)
