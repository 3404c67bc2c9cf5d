# SPDX-License-Identifier: MIT
"""Issue 3: images written by real CRIU 4.2.1 restore under `spice restore` (ptrace backend) and
the processes provably continue: next tick, same memory checksums, every thread/process, HTTP."""

from __future__ import annotations

from harness import DumpInfo, assert_continues, kill_restored, process_state
from spice import spice_restore


def test_spice_restores_criu_dump(workload_name: str, criu_dumps: dict[str, DumpInfo]) -> None:
    info = criu_dumps[workload_name]
    pid = spice_restore(info.images_dir)
    assert pid == info.pid
    cont = assert_continues(info, pid)
    assert cont.first_tick == {r: t + 1 for r, t in info.last_ticks.items()}
    assert cont.pids == info.roles
    kill_restored(info, pid)
    assert all(process_state(p) is None for p in info.pids)


def test_leave_running_dump_restores_ten_times(workload_name: str,
                                               criu_dumps_leave_running: dict[str, DumpInfo]) -> None:
    info = criu_dumps_leave_running[workload_name]
    for _ in range(10):
        pid = spice_restore(info.images_dir)
        cont = assert_continues(info, pid, new_ticks=2)
        assert all(info.last_ticks[r] < t <= info.last_ticks_max[r] + 1 for r, t in cont.first_tick.items())
        kill_restored(info, pid)
