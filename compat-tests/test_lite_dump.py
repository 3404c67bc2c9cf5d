# SPDX-License-Identifier: MIT
"""`spice dump` starts like a short-lived tool should: a real dump of each workload by the console
script, run under `python -X importtime`, imports no protobuf (images are built by
spice_criu.images.lite), none of the slow standard modules it has no use for (spice.SLOW_STDLIB),
and the images it writes restore under real CRIU."""

from __future__ import annotations

import subprocess
from pathlib import Path

import harness
from harness import assert_continues, criu_restore, kill_restored
from spice import SLOW_STDLIB, spice_importtime

#: modules `spice dump` of a workload without TCP connections must not need at start-up
NOT_AT_START = ("google", "_pb2", "spice_criu.dump.tcp", "spice_criu.dump.netlock")


def test_spice_dump_imports_no_protobuf_and_criu_restores_it(workload_name: str, compat_tmp: Path) -> None:
    wl = harness.start_workload(workload_name, compat_tmp / "lite-dump" / workload_name)
    def dumper(pid: int, images: Path, leave_running: bool) -> subprocess.CompletedProcess[str]:
        images.mkdir(parents=True, exist_ok=True)
        p, mods = spice_importtime("dump", "-t", str(pid), "-D", str(images), "-v4", "-o", "dump.log")
        assert p.returncode == 0, (p.stderr[-3000:], harness.log_tail(images / "dump.log"))
        imported.extend(mods)
        return p

    imported: list[str] = []
    info = harness.dump_workload(wl, wl.rundir / "images", dumper=dumper)
    assert "spice_criu.dump.run" in imported and "spice_criu.images.lite" in imported  # really measured
    unwanted = [m for m in imported if any(m == n or m.startswith(n + ".") or m.endswith(n) for n in NOT_AT_START)]
    assert unwanted == []
    assert sorted(SLOW_STDLIB.intersection(imported)) == []
    pid = criu_restore(info.images_dir)
    try:
        assert pid == info.pid
        assert_continues(info, pid)
    finally:
        kill_restored(info, pid)
