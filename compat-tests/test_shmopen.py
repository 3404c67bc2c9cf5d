# SPDX-License-Identifier: MIT
"""POSIX shared memory (shm_open segments in /dev/shm), both directions: real `criu dump` -> `spice
restore`, `spice dump` -> real `criu restore` / `spice restore`. The segment whose name was unlinked
is held only by an fd opened O_NOFOLLOW and a mapping; criu dumps it as a ghost file, and a restore
recreates it with its bytes, the fd and the mapping on that one inode; the named segment stays
shared between the process and its child (the echo of the counter goes on)."""

from __future__ import annotations

import zlib
from pathlib import Path

import fdkinds
import harness
import pytest
from harness import assert_continues

GONE = b"a deleted shared memory segment " * 100


@pytest.fixture(scope="module", autouse=True)
def _remove_segments() -> None:
    before = set(Path("/dev/shm").glob("spice-shmopen-*"))
    yield
    for p in set(Path("/dev/shm").glob("spice-shmopen-*")) - before:
        p.unlink(missing_ok=True)


def check_restored(info: harness.DumpInfo, pid: int) -> None:
    assert pid == info.pid
    cont = assert_continues(info, list(info.pids), new_ticks=3)
    fields = info.pre_dump["main"].fields
    assert fields["gone"] == f"{zlib.crc32(GONE):08x}"
    assert Path("/dev/shm", fields["seg"]).exists() and not Path("/dev/shm", fields["seg"] + "-gone").exists()
    # the child still copies the counter back through the named segment
    fdkinds.wait_for(lambda: fdkinds.last_field(info, "echo") > info.last_tick, 10, "the child's echo")
    del cont


criu_dump, spice_dump = fdkinds.dump_fixtures("shmopen")


def test_criu_dump_restores_under_spice(criu_dump: harness.DumpInfo) -> None:
    fdkinds.restore_and_check(criu_dump, "spice", check_restored, times=2)


@pytest.mark.parametrize("tool", ["criu", "spice"])
def test_spice_dump_restores(spice_dump: harness.DumpInfo, tool: str) -> None:
    fdkinds.restore_and_check(spice_dump, tool, check_restored)
