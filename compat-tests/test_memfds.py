# SPDX-License-Identifier: MIT
"""memfds whose size is not a whole number of pages, both directions: real `criu dump` -> `spice
restore`, `spice dump` -> real `criu restore` / `spice restore`. criu dumps the last, partial page
whole; a restore writes back only the bytes up to the size (a sealed memfd cannot grow), so the
sizes, the seals and the contents are those of before the dump and the workload goes on storing
through its shared mapping. spice dump writes memfd.img as criu does (crit equal)."""

from __future__ import annotations

import json
import mmap
import subprocess
import zlib
from pathlib import Path

import fdkinds
import harness
import pytest
from harness import assert_continues

SEALED = bytes(range(200)) * 9


def check_restored(info: harness.DumpInfo, pid: int) -> None:
    assert pid == info.pid
    assert_continues(info, list(info.pids), new_ticks=3)
    fields = info.pre_dump["main"].fields
    assert fields["sealed"] == f"{zlib.crc32(SEALED):08x}"
    assert fields["seals"] == "14/1", fields  # SHRINK|GROW|WRITE; F_SEAL_SEAL without MFD_ALLOW_SEALING
    assert fields["sizes"] == f"1800,{2 * mmap.PAGESIZE + 100},10", fields


criu_dump, spice_dump = fdkinds.dump_fixtures("memfds")


def test_criu_dump_restores_under_spice(criu_dump: harness.DumpInfo) -> None:
    fdkinds.restore_and_check(criu_dump, "spice", check_restored, times=2)


@pytest.mark.parametrize("tool", ["criu", "spice"])
def test_spice_dump_restores(spice_dump: harness.DumpInfo, tool: str) -> None:
    fdkinds.restore_and_check(spice_dump, tool, check_restored)


def _memfd_inodes(crit: Path, images: Path) -> list[dict]:
    out = subprocess.run([str(crit), "show", str(images / "memfd.img")], capture_output=True, text=True, check=True)
    entries = json.loads(out.stdout)["entries"]
    for e in entries:
        del e["shmid"], e["inode_id"]  # each tool numbers them its own way
    return sorted(entries, key=lambda e: e["name"])


def test_spice_dump_writes_memfds_as_criu(crit_bin: Path, compat_tmp: Path) -> None:
    with fdkinds.dumped_by_both("memfds", compat_tmp / "memfds" / "both") as (_wl, theirs, ours):
        a = _memfd_inodes(crit_bin, theirs)
        assert a == _memfd_inodes(crit_bin, ours)
        assert [(e["name"], e["size"]) for e in a] == [("plain", 10), ("sealed", 1800),
                                                       ("shared", 2 * mmap.PAGESIZE + 100)]
