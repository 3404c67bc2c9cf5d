# SPDX-License-Identifier: MIT
"""seccomp filter chains come back under spice restore: two chains (a thread with one filter more
than the main thread), dumped by real CRIU, restored by spice; the program probes both filters on
every tick (test_dump_objects' SECCOMP program)."""

from __future__ import annotations

from pathlib import Path

import harness
from harness import criu_dump
from spice import spice_restore
from test_dump_objects import SECCOMP, Objects


def test_spice_restores_seccomp_filters(compat_tmp: Path, criu_bin: Path) -> None:
    prog = Objects(compat_tmp / "seccomp-restore", SECCOMP, "seccomp", pass_dir=False)
    try:
        pid = prog.pid
        images = prog.dir / "images"
        images.mkdir()
        criu_dump(pid, images)
        harness.reap([pid])
        before = prog.lines()
        for _ in range(2):  # twice: the filters must not leak into the restorer's own work
            start = prog.mark()
            assert spice_restore(images) == pid
            after = prog.wait_ticks(3, start)
            assert after[0].tick == before[-1].tick + 1
            assert all(ln.fields["main"] == "99,14" for ln in after), [ln.text for ln in after]
            assert after[-1].fields["worker"] == "99,77"
            status = Path(f"/proc/{pid}/status").read_text()
            assert "Seccomp:\t2" in status and "NoNewPrivs:\t1" in status
            harness.kill_pids([pid])
    finally:
        prog.kill()
        harness.reap_zombie_children()
