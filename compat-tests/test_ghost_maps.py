# SPDX-License-Identifier: MIT
"""Deleted files that only mappings hold (POSIX semaphores and multiprocessing locks in /dev/shm,
mapped and then unlinked): CRIU dumps them as ghost files. Real `criu dump` -> `spice restore`, and
`spice dump` -> real `criu restore` / `spice restore`, on the shmghost workload: two processes
sharing one page of such a file (each FAILs if the other's writes stop showing), and a private
mapping of another one with a page of its own; the child's cwd is a directory it removed."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from pathlib import Path

import fdkinds
import harness
import pytest
from harness import criu_restore, kill_restored
from spice import spice_dumper, spice_restore

criu_dump, spice_dump = fdkinds.dump_fixtures("shmghost")


def assert_ghosts(crit: Path, images: Path) -> None:
    """Two deleted files, each reached through a file id per process (CRIU gives the parent's and
    the child's mappings ids of their own), and the child's removed cwd: five GHOST remaps onto
    three ghost images."""
    out = subprocess.run([str(crit), "show", str(images / "remap-fpath.img")], capture_output=True, text=True,
                         check=True)
    remaps = json.loads(out.stdout)["entries"]
    assert [e["remap_type"] for e in remaps] == ["GHOST"] * 5, remaps
    assert len({e["orig_id"] for e in remaps}) == 5 and len({e["remap_id"] for e in remaps}) == 3, remaps


def test_criu_dump_of_mapped_ghosts_restores_under_spice(criu_dump: harness.DumpInfo, crit_bin: Path) -> None:
    assert_ghosts(crit_bin, criu_dump.images_dir)
    # the same images twice: the ghosts are recreated each time
    fdkinds.restore_and_check(criu_dump, "spice", fdkinds.check_shmghost, times=2)


def test_spice_dump_of_mapped_ghosts_decodes_as_criu_writes_them(spice_dump: harness.DumpInfo,
                                                                 crit_bin: Path) -> None:
    assert_ghosts(crit_bin, spice_dump.images_dir)


@pytest.mark.parametrize("tool", ["criu", "spice"])
def test_spice_dump_of_mapped_ghosts_restores(spice_dump: harness.DumpInfo, tool: str) -> None:
    fdkinds.restore_and_check(spice_dump, tool, fdkinds.check_shmghost)


@pytest.mark.parametrize("dumper", ["criu", "spice"])
def test_deleted_exe_restores_with_the_other_tool(dumper: str, criu_bin: Path, compat_tmp: Path) -> None:
    """A process whose binary was deleted (upgraded under it): its exe is a ghost too. The restored
    process runs the recreated binary, shown as the dumped "PATH (deleted)"."""
    harness.SPECS.setdefault("exeghost", dataclasses.replace(harness.spec("counter"), name="exeghost"))
    wl = harness.start_workload("exeghost", compat_tmp / "ghost-maps" / f"exe-{dumper}")
    (harness.build_dir() / "exeghost").unlink()  # rebuilt by the next start
    exe = os.readlink(f"/proc/{wl.pid}/exe")
    assert exe.endswith("/exeghost (deleted)"), exe
    info = harness.dump_workload(wl, wl.rundir / "images", dumper=None if dumper == "criu" else spice_dumper)
    pid = spice_restore(info.images_dir) if dumper == "criu" else criu_restore(info.images_dir)
    assert pid == info.pid
    harness.assert_continues(info, pid, new_ticks=3)
    assert os.readlink(f"/proc/{pid}/exe") == exe
    kill_restored(info, pid)
