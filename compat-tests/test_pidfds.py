# SPDX-License-Identifier: MIT
"""pidfds, both directions: real `criu dump` -> `spice restore`, `spice dump` -> real `criu restore`
/ `spice restore`, and `spice dump` writing them as criu does (crit equal). On the pidfds workload:
after a restore its pidfd still leads to its (restored) child, which it reaps through the pidfd
when the test kills it; its own pidfd is still non-blocking; the pidfd of a child that exited before
the dump still reports an exit. A pidfd of a process outside the tree is refused, as criu does."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import fdkinds
import harness
import pytest
from harness import assert_continues


def check_restored(info: harness.DumpInfo, pid: int) -> None:
    assert pid == info.pid
    assert_continues(info, list(info.pids), new_ticks=3)
    fields = info.pre_dump["main"].fields
    assert (fields["selfnb"], fields["dead"], fields["reaped"]) == ("1", "1", "0"), fields
    child = int(fields["child"])
    assert harness.process_state(child) not in (None, "Z")
    os.kill(child, signal.SIGTERM)
    fdkinds.wait_for(lambda: fdkinds.last_field_text(info, "reaped") == "sig15", 10,
                     "the restored process to reap its child through its pidfd")


criu_dump, spice_dump = fdkinds.dump_fixtures("pidfds")


def test_criu_dump_restores_under_spice(criu_dump: harness.DumpInfo) -> None:
    fdkinds.restore_and_check(criu_dump, "spice", check_restored, times=2)


def test_spice_dump_writes_pidfds_as_criu(crit_bin: Path, compat_tmp: Path) -> None:
    with fdkinds.dumped_by_both("pidfds", compat_tmp / "pidfds" / "both") as (wl, theirs, ours):
        a = fdkinds.crit_files(crit_bin, theirs, "PIDFD", "pidfd")
        assert a == fdkinds.crit_files(crit_bin, ours, "PIDFD", "pidfd")
        child = fdkinds.last_field(wl, "child")
        assert sorted((e["nspid"], e["flags"]) for e in a) == sorted([(child, 0), (wl.pid, os.O_NONBLOCK), (-1, 0)])


@pytest.mark.parametrize("tool", ["criu", "spice"])
def test_spice_dump_restores(spice_dump: harness.DumpInfo, tool: str) -> None:
    fdkinds.restore_and_check(spice_dump, tool, check_restored)


def test_pidfd_outside_the_tree_is_refused_and_the_tree_runs_on(compat_tmp: Path) -> None:
    run = compat_tmp / "pidfds" / "outside"
    run.mkdir(parents=True)
    out = run / "pidfds.out"
    harness.make_subreaper()
    with open(run / "pidfds.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, str(fdkinds.HERE / "pidfds.py"), str(out), "outside"], cwd=run,
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        fdkinds.wait_for(lambda: out.exists() and b"outside=1" in out.read_bytes(), 10, "the workload to start")
        fdkinds.assert_dump_refused(proc.pid, run, "pidfd pid 1 is not a part of process tree")
        ticks = len(out.read_bytes().splitlines())
        fdkinds.wait_for(lambda: len(out.read_bytes().splitlines()) > ticks + 2, 10, "the workload to go on")
        assert harness.process_state(proc.pid) in ("R", "S")
    finally:
        harness.kill_pids([proc.pid])
