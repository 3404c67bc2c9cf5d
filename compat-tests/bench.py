# SPDX-License-Identifier: MIT
"""`make bench`: spice vs real CRIU 4.2.1 on the same image dirs, measured in the same run.

For every workload: one real `criu dump`, then N restores by each tool, alternating (criu, spice,
criu, spice...), each timed as the wall time of the whole command (`-d`, detached), the restored tree
killed and reaped in between. Prints median/min/max and the spice/criu ratio of the medians. With
`spice dump` available, also dump times (spice vs criu on fresh instances, --leave-running).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import harness
from spice import spice_cmd

from spice_criu.images import stats

REPO = Path(__file__).resolve().parent.parent
SPICE = spice_cmd()


def timed(cmd: list[str]) -> float:
    """Wall time of a command run to completion (RuntimeError with its stderr if it fails)."""
    t0 = time.perf_counter()
    p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, cwd=REPO)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr.strip()[-2000:]}")
    return dt


def _restore_once(tool: str, images: Path, info: harness.DumpInfo, backend: str) -> tuple[float, float]:
    """(wall time of the command, the tool's own restore_time from stats-restore), seconds."""
    if tool == "criu":
        cmd = [str(harness.CRIU_BIN), "restore", "-D", str(images), "-d", "-o", "bench-restore.log"]
    else:
        cmd = [*SPICE, "restore", "-D", str(images), "-d", "-o", "bench-restore.log", "--backend", backend]
    dt = timed(cmd)
    internal = stats.read(images / "stats-restore").restore.restore_time / 1e6
    harness.assert_continues(info, info.pid, new_ticks=2)
    harness.kill_restored(info, info.pid)
    return dt, internal


def _stats(xs: list[float]) -> str:
    return f"{statistics.median(xs) * 1e3:7.1f} ms ({min(xs) * 1e3:6.1f}-{max(xs) * 1e3:6.1f})"


def bench_restore(name: str, base: Path, n: int, backend: str) -> tuple[float, float]:
    wl = harness.start_workload(name, base / name / "run")
    images = base / name / "images"
    images.mkdir(parents=True)
    info = harness.dump_workload(wl, images)
    times: dict[str, list[float]] = {"criu": [], "spice": []}
    inner: dict[str, list[float]] = {"criu": [], "spice": []}
    for i in range(n * 2):
        tool = ("criu", "spice")[i % 2]
        wall, internal = _restore_once(tool, images, info, backend)
        times[tool].append(wall)
        inner[tool].append(internal)
    c, s = statistics.median(times["criu"]), statistics.median(times["spice"])
    ci, si = statistics.median(inner["criu"]), statistics.median(inner["spice"])
    print(f"restore {name:9} wall: criu {_stats(times['criu'])}  spice[{backend}] {_stats(times['spice'])}  "
          f"ratio {s / c:5.2f} | restore_time: criu {ci * 1e3:6.1f} ms spice {si * 1e3:6.1f} ms "
          f"ratio {si / ci:5.2f}", flush=True)
    return c, s


def bench_dump(name: str, base: Path, n: int) -> tuple[float, float] | None:
    times: dict[str, list[float]] = {"criu": [], "spice": []}
    wl = harness.start_workload(name, base / name / "dumprun")
    try:
        for i in range(n * 2):
            tool = ("criu", "spice")[i % 2]
            d = base / name / f"dump-{i}"
            d.mkdir(parents=True)
            if tool == "criu":
                cmd = [str(harness.CRIU_BIN), "dump", "-t", str(wl.pid), "-D", str(d), "-R", "-o", "dump.log"]
            else:
                cmd = [*SPICE, "dump", "-t", str(wl.pid), "-D", str(d), "-R", "-o", "dump.log"]
            try:
                times[tool].append(timed(cmd))
            except RuntimeError as e:
                if tool == "spice" and not times["spice"]:
                    print(f"dump    {name:9} spice dump not available: {str(e).splitlines()[-1][:120]}")
                    return None
                raise
            shutil.rmtree(d)
            wl.wait_ticks(1)
    finally:
        wl.kill()
    c, s = statistics.median(times["criu"]), statistics.median(times["spice"])
    print(f"dump    {name:9} criu {_stats(times['criu'])}  spice {_stats(times['spice'])}  ratio {s / c:5.2f}",
          flush=True)
    return c, s


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-n", type=int, default=int(os.environ.get("BENCH_N", "10")), help="runs per tool")
    ap.add_argument("--backend", default="ptrace")
    ap.add_argument("--no-dump", action="store_true")
    ap.add_argument("workloads", nargs="*", default=harness.WORKLOADS)
    a = ap.parse_args()
    harness.make_subreaper()
    harness.ensure_criu()
    base = Path(tempfile.mkdtemp(prefix="spice-bench-"))
    try:
        print(f"{a.n} runs per tool, alternating; wall time of `restore -d` / `dump -R`; criu = {harness.CRIU_BIN}")
        for name in a.workloads:
            bench_restore(name, base, a.n, a.backend)
        if not a.no_dump:
            for name in a.workloads:
                bench_dump(name, base, a.n)
    finally:
        harness.kill_processes_under(base)
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
