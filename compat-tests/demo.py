# SPDX-License-Identifier: MIT
"""`make demo`: checkpoint a running C program and restore it with spice, showing it carry on.

The counter workload keeps 4 MiB of private memory, a shared mapping, a file mapping, a pipe and
an open file, and prints a checksummed line every 100 ms. It is dumped (by `spice dump` once that
exists here, else by real CRIU 4.2.1), killed, restored by `spice restore`, and its output read.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import harness
from spice import spice, spice_restore


def main() -> int:
    base = Path("/tmp/spice-demo")
    shutil.rmtree(base, ignore_errors=True)
    images = base / "images"
    images.mkdir(parents=True)
    wl = harness.start_workload("counter", base / "run")
    print(f"started counter, pid {wl.pid}; its last lines:")
    print("".join("  " + ln.text + "\n" for ln in wl.ticks()[-2:]), end="")
    dumper = "spice"
    t0 = time.monotonic()
    p = spice("dump", "-t", str(wl.pid), "-D", str(images), "-v4", "-o", "dump.log", check=False)
    if p.returncode != 0:
        dumper = "criu"
        print(f"(spice dump unavailable here: {p.stderr.strip() or p.returncode}; using real CRIU)")
        harness.criu_dump(wl.pid, images)
    print(f"{dumper} dump -t {wl.pid} -D {images}: {(time.monotonic() - t0) * 1e3:.0f} ms, process killed")
    harness.reap([wl.pid])
    mark = wl.out_file.stat().st_size
    t0 = time.monotonic()
    pid = spice_restore(images)
    print(f"spice restore -D {images} -d: {(time.monotonic() - t0) * 1e3:.0f} ms, pid {pid} is back")
    time.sleep(0.5)
    lines, _ = harness.read_lines(wl.out_file, mark)
    print("its next lines (tick numbers and checksums continue):")
    print("".join("  " + ln.text + "\n" for ln in lines[:3]), end="")
    print(f"\nspice crit show {images}/pstree.img:")
    print(spice("crit", "show", str(images / "pstree.img")).stdout, end="")
    harness.kill_pids([pid])
    return 0 if lines else 1


if __name__ == "__main__":
    sys.exit(main())
