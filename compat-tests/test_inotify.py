# SPDX-License-Identifier: MIT
"""inotify fds, both directions: real `criu dump` -> `spice restore`, `spice dump` -> real `criu
restore` / `spice restore`, and `spice dump` writing the watches as criu does (crit equal), on the
inotify workload (watches on a directory, a file, and one numbered 5): after a restore, the watches
keep their numbers and events still arrive.

(GNU `tail -f` itself, which follows a file with inotify and poll(), is in test_real_programs.py:
it dies after a criu restore, and goes on after a spice restore.)"""

from __future__ import annotations

import time
from pathlib import Path

import fdkinds
import harness
import pytest
from harness import assert_continues, kill_restored
from spice import assert_one_error, spice, spice_restore


def check_restored(info: harness.DumpInfo, pid: int) -> None:
    """The restored process goes on with its watches numbered as before (wds is a constant of its
    lines), and sees files created in watched/ and writes to watched.txt."""
    assert pid == info.pid
    cont = assert_continues(info, pid, new_ticks=3)
    assert cont.first_tick["main"] == info.last_tick + 1
    assert fdkinds.last_field(info, "seq") > info.last_tick
    assert info.pre_dump["main"].fields["wds"] == "1,2/5"
    created = fdkinds.last_field(info, "created")
    for i in range(3):
        (info.rundir / "watched" / f"new-{pid}-{time.monotonic_ns()}-{i}").touch()
    fdkinds.wait_for(lambda: fdkinds.last_field(info, "created") == created + 3, 10, "3 IN_CREATE events")
    modified = fdkinds.last_field(info, "modified")
    for n in (1, 2):  # one at a time: identical queued events are merged
        with open(info.rundir / "watched.txt", "a") as f:
            f.write("more\n")
        fdkinds.wait_for(lambda n=n: fdkinds.last_field(info, "modified") >= modified + n, 10, "IN_MODIFY")


criu_dump, spice_dump = fdkinds.dump_fixtures("inotify")


def test_criu_dump_restores_under_spice(criu_dump: harness.DumpInfo) -> None:
    fdkinds.restore_and_check(criu_dump, "spice", check_restored, times=2)


def test_spice_dump_writes_watches_as_criu(crit_bin: Path, compat_tmp: Path) -> None:
    with fdkinds.dumped_by_both("inotify", compat_tmp / "inotify" / "both") as (wl, theirs, ours):
        a = sorted(fdkinds.crit_files(crit_bin, theirs, "INOTIFY", "ify"), key=lambda e: len(e["wd"]))
        assert a == sorted(fdkinds.crit_files(crit_bin, ours, "INOTIFY", "ify"), key=lambda e: len(e["wd"]))
        assert [w["wd"] for e in a for w in e["wd"]] == [5, 2, 1]  # as the kernel lists them: newest first
        assert {w["f_handle"]["path"] for e in a for w in e["wd"]} == {
            str(wl.rundir), str(wl.rundir / "watched"), str(wl.rundir / "watched.txt")}


@pytest.mark.parametrize("tool", ["criu", "spice"])
def test_spice_dump_restores(spice_dump: harness.DumpInfo, tool: str) -> None:
    fdkinds.restore_and_check(spice_dump, tool, check_restored)


def test_missing_watched_file_fails_cleanly(criu_dump: harness.DumpInfo) -> None:
    """A watched file gone since the dump: one clear error naming it, exit 1, no task left."""
    info = criu_dump
    watched, aside = info.rundir / "watched.txt", info.rundir / "watched.txt.aside"
    watched.rename(aside)
    try:
        p = spice("restore", "-D", str(info.images_dir), "-d", "-o", "missing.log", check=False)
        err = assert_one_error(p, "files", f"can't open the watched {watched}: No such file or directory")
        assert err.startswith("Error (spice/files): inotify (file id "), err
        assert harness.process_state(info.pid) is None
    finally:
        aside.rename(watched)
    pid = spice_restore(info.images_dir)
    check_restored(info, pid)
    kill_restored(info, pid)
