# SPDX-License-Identifier: MIT
"""A tree criu restored lives in a time namespace of its own (criu restores every tree into a new
one, whose offsets keep CLOCK_MONOTONIC and CLOCK_BOOTTIME going on from their values at the dump).
criu dumps such a tree again, taking its time namespace in the images (timens-<id>.img, the clocks
as seen inside it); so does `spice dump`: its ids and timens images equal criu's (crit), and real
`criu restore` of them brings the clocks back where they were at the spice dump, whereas the
tree's clocks run ahead of ours by the time it spent dumped.

`spice restore` makes the time namespace as criu does, for these images and for a tree dumped in
ours alike: the restored clocks go on from their dumped values (the time spent dumped does not
count)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import fdkinds  # noqa: F401  (registers the clocks workload)
import harness
import pytest
from harness import assert_continues
from spice import spice_dumper, spice_restore

PAUSE = 3.0  # seconds the tree spends dumped before criu restores it: its clocks' offset


class _Restored:
    """What harness.Workload needs of its process, for a tree criu restored (not our Popen)."""

    def __init__(self, pid: int) -> None:
        self.pid, self.returncode = pid, None

    def poll(self) -> int | None:
        return None if harness.is_running(self.pid) else 0


def _offsets(pid: int) -> dict[str, float]:
    with open(f"/proc/{pid}/timens_offsets") as f:
        return {name: int(s) + int(ns) / 1e9 for name, s, ns in (line.split() for line in f)}


def _crit(crit: Path, img: Path) -> list[dict]:
    out = subprocess.run([str(crit), "show", str(img)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)["entries"]


@pytest.fixture(scope="module")
def restored(compat_tmp: Path) -> harness.Workload:
    """The clocks workload dumped by criu, left dumped for PAUSE s, restored by criu."""
    wl = harness.start_workload("clocks", compat_tmp / "timens")
    harness.criu_dump(wl.pid, wl.rundir / "first")  # (not dump_workload: its DumpInfo's restores die after each test)
    harness.reap([wl.pid])
    time.sleep(PAUSE)
    pid = harness.criu_restore(wl.rundir / "first")
    assert os.stat(f"/proc/{pid}/ns/time").st_ino != os.stat("/proc/self/ns/time").st_ino
    assert all(v < -PAUSE + 0.5 for v in _offsets(pid).values()), _offsets(pid)
    again = _workload(wl, pid)
    again.wait_ticks(3)
    yield again
    again.kill()


def test_spice_dump_writes_the_time_namespace_as_criu(restored: harness.Workload, crit_bin: Path) -> None:
    pid = restored.pid
    theirs, ours = restored.rundir / "criu-again", restored.rundir / "spice-again"
    harness.criu_dump(pid, theirs, leave_running=True)
    spice_dumper(pid, ours, leave_running=True)
    ids = _crit(crit_bin, theirs / f"ids-{pid}.img")
    assert _crit(crit_bin, ours / f"ids-{pid}.img") == ids
    root = _crit(crit_bin, theirs / "inventory.img")[0]["root_ids"]
    assert _crit(crit_bin, ours / "inventory.img")[0]["root_ids"] == root
    assert ids[0]["time_ns_id"] != root["time_ns_id"]
    name = f"timens-{ids[0]['time_ns_id']}.img"
    assert sorted(p.name for p in theirs.glob("timens-*")) == sorted(p.name for p in ours.glob("timens-*")) == [name]
    a, b = _crit(crit_bin, theirs / name)[0], _crit(crit_bin, ours / name)[0]
    host = time.clock_gettime(time.CLOCK_MONOTONIC)
    for clock in ("monotonic", "boottime"):
        ta = a[clock]["tv_sec"] + a[clock]["tv_nsec"] / 1e9
        tb = b[clock]["tv_sec"] + b[clock]["tv_nsec"] / 1e9
        assert 0 <= tb - ta < 2.0, (clock, a, b)  # spice dumped right after criu
        assert host - tb > PAUSE - 0.5  # the clocks inside the namespace, not ours
    restored.wait_ticks(3)  # both dumps left it running


def _assert_clocks_go_on(info: harness.DumpInfo, pid: int) -> None:
    """The restored tree continues, and its first clock readings are where they were at the dump:
    the time it spent dumped (over a second here) does not count."""
    cont = assert_continues(info, pid)
    first = min((ln for ln in harness.read_lines(info.out_file, info.resume_offset)[0] if "mono" in ln.fields),
                key=lambda ln: ln.tick)
    for clock in ("mono", "boot"):
        dumped = int(info.pre_dump["main"].fields[clock])
        assert 0 <= int(first.fields[clock]) - dumped < harness.scaled(0.8) * 1000, (clock, dumped, first.text, cont)
    assert os.stat(f"/proc/{pid}/ns/time").st_ino != os.stat("/proc/self/ns/time").st_ino


def test_spice_dump_restores_with_its_clocks_under_criu_then_spice(restored: harness.Workload) -> None:
    """A chain of migrations: spice dumps the tree criu restored (in its own time namespace), criu
    restores that a second later with its clocks; spice dumps it again, and spice restores it a
    second later with its clocks too."""
    info = harness.dump_workload(restored, restored.rundir / "spice-dump-1", dumper=spice_dumper)
    time.sleep(1.0)
    pid = harness.criu_restore(info.images_dir)
    try:
        _assert_clocks_go_on(info, pid)
        again = _workload(restored, pid)
        again.wait_ticks(3)
        info = harness.dump_workload(again, restored.rundir / "spice-dump-2", dumper=spice_dumper)
        time.sleep(1.0)
        pid = spice_restore(info.images_dir)
        _assert_clocks_go_on(info, pid)
    finally:
        harness.kill_restored(info, pid)


def _workload(wl: harness.Workload, pid: int) -> harness.Workload:
    """wl's tree, as restored at pid (not our Popen)."""
    return harness.Workload("clocks", wl.rundir, wl.out_file, wl.log_file, None, _Restored(pid),  # type: ignore[arg-type]
                            wl.out_file.stat().st_size)


def test_criu_dump_of_a_tree_in_our_namespace_restores_under_spice_with_its_clocks(compat_tmp: Path) -> None:
    """A tree that shares our time namespace, dumped by criu (timens-0.img) and restored by spice a
    second later, gets a namespace of its own whose clocks go on from the dump, as criu does it."""
    wl = harness.start_workload("clocks", compat_tmp / "timens-host")
    info = harness.dump_workload(wl, wl.rundir / "images")
    time.sleep(1.0)
    pid = spice_restore(info.images_dir)
    try:
        _assert_clocks_go_on(info, pid)
    finally:
        harness.kill_restored(info, pid)
