# SPDX-License-Identifier: MIT
"""An O_TMPFILE file, both directions: real `criu dump` -> `spice restore`, `spice dump` -> real
`criu restore` / `spice restore`. criu dumps it as a deleted file (a ghost) whose flags keep
O_TMPFILE; a restore recreates it and reopens it without that flag (which would make a new file,
or fail with ENOTDIR on a file), so the workload finds its bytes, its position and no name."""

from __future__ import annotations

import zlib

import fdkinds
import harness
import pytest
from harness import assert_continues

HEAD = b"an unnamed O_TMPFILE file " * 200


def check_restored(info: harness.DumpInfo, pid: int) -> None:
    assert pid == info.pid
    assert_continues(info, list(info.pids), new_ticks=3)
    fields = info.pre_dump["main"].fields
    assert (fields["head"], fields["links"]) == (f"{zlib.crc32(HEAD):08x}", "0"), fields


criu_dump, spice_dump = fdkinds.dump_fixtures("tmpfiles")


def test_criu_dump_restores_under_spice(criu_dump: harness.DumpInfo) -> None:
    fdkinds.restore_and_check(criu_dump, "spice", check_restored, times=2)


@pytest.mark.parametrize("tool", ["criu", "spice"])
def test_spice_dump_restores(spice_dump: harness.DumpInfo, tool: str) -> None:
    fdkinds.restore_and_check(spice_dump, tool, check_restored)
