# SPDX-License-Identifier: MIT
"""POSIX message queues (mq_open): neither real criu 4.2 nor spice can dump one. Both refuse the
dump and the process runs on; spice names the fd and what it is (criu only says it can't find the
fd's mount). spice used to call a linked queue an unlinked file and dump an unlinked one as a
ghost regular file."""

from __future__ import annotations

import ctypes
import ctypes.util
import subprocess
import sys
from pathlib import Path

import fdkinds
import harness
import pytest


def _lines(out: Path) -> int:
    return len(out.read_bytes().splitlines()) if out.exists() else 0


@pytest.mark.parametrize("name", ["linked", "unlink"])
def test_mqueue_dump_is_refused_by_both_and_the_process_runs_on(compat_tmp: Path, name: str) -> None:
    run = compat_tmp / "mqueue" / name
    run.mkdir(parents=True)
    out = run / "mqueue.out"
    harness.make_subreaper()
    with open(run / "mqueue.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, str(fdkinds.HERE / "mqueue.py"), str(out),
                                 *([name] if name == "unlink" else [])], cwd=run,
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        fdkinds.wait_for(lambda: b"got=4" in (out.read_bytes() if out.exists() else b""), 10, "the workload to start")
        with pytest.raises(harness.CriuError, match="Can't lookup mount"):
            harness.criu_dump(proc.pid, run / "criu")
        ticks = _lines(out)
        fdkinds.wait_for(lambda: _lines(out) > ticks + 2, 10, "the workload to go on after criu's dump")
        (run / "spice").mkdir()
        fdkinds.assert_dump_refused(proc.pid, run / "spice",
                                    "is a POSIX message queue (mq_open); message queues are not supported "
                                    "(criu refuses them too)")
        ticks = _lines(out)
        fdkinds.wait_for(lambda: _lines(out) > ticks + 2, 10, "the workload to go on after spice's dump")
        assert harness.process_state(proc.pid) in ("R", "S")
        assert out.read_bytes().splitlines()[-1].endswith(b"got=4")
    finally:
        harness.kill_pids([proc.pid])
        ctypes.CDLL(ctypes.util.find_library("rt") or "librt.so.1").mq_unlink(f"/spice-mq-{proc.pid}".encode())
