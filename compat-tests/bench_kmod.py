# SPDX-License-Identifier: MIT
"""`make bench-kmod`: real CRIU vs spice (ptrace backend) vs spice (kmod backend), in the qemu guest.

Runs inside the guest that `make bench-kmod` boots (the module loaded, the image directories on
a real ext4 disk so that dropping the page cache sends reads to the disk):

1. for every workload: one real `criu dump`, then N restores by each tool, alternating (criu,
   ptrace, kmod, criu, ...), each the wall time of the whole `restore -d` command and the tool's
   own restore_time from stats-restore; the restored tree is checked (a new tick) and killed in
   between. Prints median/min/max and the ratios criu/tool of the medians (> 1: faster than CRIU).
2. where the time of a kmod restore goes: one restore at -v4, the restorer's log lines with the
   time since the previous one, and the module's own split (teardown, build, prefault).
3. cold page cache: the working set of a first invocation (httpd: a GET; pyholder: two ticks, each
   reads all its 60 MiB) is recorded with `--record-working-set`, then for each tool: drop the
   page cache, restore, invoke, and count the major faults of the invocation (/proc/PID/stat). A
   kmod restore with the working set prefaulted must show none.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import harness
from bench import timed
from spice import spice_cmd

from spice_criu.images import stats

REPO = Path(__file__).resolve().parent.parent
SPICE = spice_cmd()  # the console script, as users run it
TOOLS = ("criu", "ptrace", "kmod")
WS_FILE = "spice-working-set.json"
TARGET = 10.0  # kmod restore_time vs CRIU's on pyholder (the target)


def restore_cmd(tool: str, images: Path, *extra: str) -> list[str]:
    if tool == "criu":
        return [str(harness.CRIU_BIN), "restore", "-D", str(images), "-d", "-o", "bench-restore.log", *extra]
    return [*SPICE, "restore", "-D", str(images), "-d", "-o", "bench-restore.log", "--backend", tool, *extra]


def module_ns() -> int:
    """Time spent inside SPICE_IOC_RESTORE so far (all restores), from the module's counters."""
    return int(Path("/sys/class/misc/spice/stats/ns_total").read_text())


def restore_once(tool: str, info: harness.DumpInfo) -> tuple[float, float, float]:
    """(wall time, the tool's own restore_time, time inside the module), seconds; the restored
    tree checked and killed."""
    ns0 = module_ns()
    wall = timed(restore_cmd(tool, info.images_dir))
    module = (module_ns() - ns0) / 1e9
    inner = stats.read(info.images_dir / "stats-restore").restore.restore_time / 1e6
    harness.assert_continues(info, info.pid, new_ticks=2)
    harness.kill_restored(info, info.pid)
    return wall, inner, module


def fmt(xs: list[float]) -> str:
    return f"{statistics.median(xs) * 1e3:8.1f} ({min(xs) * 1e3:7.1f}-{max(xs) * 1e3:7.1f})"


def bench_restores(info: harness.DumpInfo, n: int) -> dict[str, tuple[float, float]]:
    wall: dict[str, list[float]] = {t: [] for t in TOOLS}
    inner: dict[str, list[float]] = {t: [] for t in TOOLS}
    module: list[float] = []
    for _ in range(n):
        for tool in TOOLS:
            w, i, m = restore_once(tool, info)
            wall[tool].append(w)
            inner[tool].append(i)
            if tool == "kmod":
                module.append(m)
    med = {t: (statistics.median(wall[t]), statistics.median(inner[t])) for t in TOOLS}
    print(f"\n{info.name}: {n} restores per tool, alternating; ms, median (min-max)")
    print(f"  {'tool':8} {'wall':>26} {'restore_time':>26} {'criu/tool wall':>15} {'criu/tool rt':>13}")
    for t in TOOLS:
        print(f"  {t:8} {fmt(wall[t]):>26} {fmt(inner[t]):>26} {med['criu'][0] / med[t][0]:15.2f} "
              f"{med['criu'][1] / med[t][1]:13.2f}")
    print(f"  {'module':8} {'':>26} {fmt(module):>26} {'':>15} {med['criu'][1] / statistics.median(module):13.2f}"
          "  (the SPICE_IOC_RESTORE calls of a kmod restore)")
    sys.stdout.flush()
    return med


_TS = re.compile(r"^\((\d+\.\d+)\) (.*)$")


def profile_kmod(info: harness.DumpInfo) -> None:
    """Where a kmod restore's time goes: its -v4 log, each line with the time since the last one."""
    timed(restore_cmd("kmod", info.images_dir, "-v4"))
    inner = stats.read(info.images_dir / "stats-restore").restore.restore_time / 1e6
    harness.assert_continues(info, info.pid, new_ticks=2)
    harness.kill_restored(info, info.pid)
    print(f"\n{info.name}: one kmod restore at -v4 (restore_time {inner * 1e3:.1f} ms); ms since the previous line")
    prev = None
    for line in (info.images_dir / "bench-restore.log").read_text().splitlines():
        m = _TS.match(line)
        if not m:
            continue
        t = float(m[1])
        print(f"  {(t - prev) * 1e3 if prev is not None else 0:8.1f}  {m[2][:150]}")
        prev = t
    sys.stdout.flush()


# --- cold page cache + working set --------------------------------------------------------------------


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def majflt(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[9])


def invoker(info: harness.DumpInfo) -> Callable[[int], float]:
    """The workload's "function invocation": a GET for httpd; otherwise two ticks (the first one
    after a restore may be the rest of the tick the dump interrupted, the second reads all data)."""
    if info.spec.needs_port:
        def call(pid: int) -> float:
            t0 = time.perf_counter()
            harness.http_get(info.port)
            return time.perf_counter() - t0
    else:
        def call(pid: int) -> float:
            t0 = time.perf_counter()
            since = harness.read_lines(info.out_file)[1]
            deadline = time.monotonic() + harness.scaled(60)
            while sum(not ln.failed for ln in harness.read_lines(info.out_file, since)[0]) < 2:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{info.name}: no two ticks within 60 s")
                time.sleep(0.002)
            return time.perf_counter() - t0
    return call


def record_working_set(info: harness.DumpInfo, invoke: Callable[[int], float]) -> str:
    images = info.images_dir
    (images / WS_FILE).unlink(missing_ok=True)
    pidfile = images / "bench-record.pid"
    pidfile.unlink(missing_ok=True)
    cmd = [*SPICE, "restore", "-D", str(images), "-d", "-o", "bench-record.log", "-v4", "--backend", "kmod",
           "--pidfile", str(pidfile), "--record-working-set", "--record-timeout", "600"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    while not (pidfile.exists() and pidfile.read_text()):
        if proc.poll() is not None:
            raise RuntimeError(f"recording restore failed: {proc.stderr.read() if proc.stderr else ''}")
        time.sleep(0.01)
    invoke(int(pidfile.read_text()))
    proc.send_signal(signal.SIGUSR1)
    if proc.wait(timeout=harness.scaled(120)) != 0:
        raise RuntimeError(f"recording restore failed: {proc.stderr.read() if proc.stderr else ''}")
    harness.kill_restored(info, info.pid)
    log = (images / "bench-record.log").read_text()
    m = re.search(r"working set of task \d+ \(.*?\): (\d+) pages touched, (\d+) written", log)
    return f"{m[1]} pages, {m[2]} written" if m else "?"


def cold_invocation(info: harness.DumpInfo, tool: str,
                    invoke: Callable[[int], float]) -> tuple[int, float, float, float]:
    """Drop the page cache, restore, invoke once: (major faults of the invocation, its latency,
    restore wall time, time inside the module)."""
    drop_caches()
    extra = ("-v4",) if tool.startswith("kmod") else ()
    ns0 = module_ns()
    wall = timed(restore_cmd("kmod" if tool.startswith("kmod") else tool, info.images_dir, *extra))
    module = (module_ns() - ns0) / 1e9
    pid = info.pid
    if tool.startswith("kmod"):
        # the task's counters when the module returned (its prefault faults are counted there)
        log = (info.images_dir / "bench-restore.log").read_text()
        m = re.search(rf"task {pid}: .*majflt=(\d+)", log)
        before = int(m[1]) if m else majflt(pid)
    else:
        before = majflt(pid)  # read right after the command returns: an upper bound for "before"
    latency = invoke(pid)
    faults = majflt(pid) - before
    harness.assert_continues(info, pid, new_ticks=2)
    harness.kill_restored(info, pid)
    return faults, latency, wall, module


def bench_cold(info: harness.DumpInfo, rounds: int) -> bool:
    invoke = invoker(info)
    ws = record_working_set(info, invoke)
    print(f"\n{info.name}: cold page cache (drop_caches before each restore), first invocation after restore; "
          f"working set recorded over one invocation: {ws}")
    print(f"  {'restore':12} {'major faults':>14} {'invocation ms':>14} {'restore wall ms':>16} {'module ms':>10}")
    ok = True
    aside = info.images_dir / (WS_FILE + ".aside")
    variants = ("kmod+ws", "kmod", "ptrace", "criu")
    results: dict[str, list[tuple[int, float, float, float]]] = {v: [] for v in variants}
    for _ in range(rounds):
        for v in variants:
            if v == "kmod":
                shutil.move(info.images_dir / WS_FILE, aside)
            try:
                results[v].append(cold_invocation(info, v, invoke))
            finally:
                if v == "kmod":
                    shutil.move(aside, info.images_dir / WS_FILE)
    for v in variants:
        faults = [r[0] for r in results[v]]
        lat = statistics.median(r[1] for r in results[v]) * 1e3
        wall = statistics.median(r[2] for r in results[v]) * 1e3
        module = statistics.median(r[3] for r in results[v]) * 1e3
        print(f"  {v:12} {'/'.join(map(str, faults)):>14} {lat:14.1f} {wall:16.1f} "
              f"{f'{module:10.1f}' if v.startswith('kmod') else '':>10}")
        if v == "kmod+ws" and any(faults):
            ok = False
    print(f"  working-set prefault, no major fault in the first invocation: {'PASS' if ok else 'FAIL'}")
    sys.stdout.flush()
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=int(os.environ.get("BENCH_N", "10")), help="restores per tool")
    ap.add_argument("--cold-rounds", type=int, default=3)
    ap.add_argument("--cold-only", action="store_true", help="only the cold page cache part")
    ap.add_argument("workloads", nargs="*", default=harness.WORKLOADS)
    a = ap.parse_args()
    if not os.path.exists("/dev/spice"):
        sys.exit("bench-kmod: /dev/spice is missing (run it through `make bench-kmod`, in the guest)")
    harness.make_subreaper()
    harness.ensure_criu()
    base = Path(tempfile.mkdtemp(prefix="spice-bench-kmod-", dir=os.environ.get("SPICE_COMPAT_TMP")))
    ok = True
    try:
        print(f"criu {harness.CRIU_BIN}, spice {REPO} ({sys.executable}); images in {base}")
        infos = {}
        for name in a.workloads:
            wl = harness.start_workload(name, base / name / "run")
            infos[name] = harness.dump_workload(wl, base / name / "images")
        meds = {} if a.cold_only else {name: bench_restores(info, a.n) for name, info in infos.items()}
        for name in ("pyholder", "httpd"):
            if name in infos and not a.cold_only:
                profile_kmod(infos[name])
        for name in ("httpd", "pyholder"):
            if name in infos:
                ok &= bench_cold(infos[name], a.cold_rounds)
        if "pyholder" in meds:
            m = meds["pyholder"]
            ratio = m["criu"][1] / m["kmod"][1]
            print(f"\npyholder restore_time: criu {m['criu'][1] * 1e3:.1f} ms, kmod {m['kmod'][1] * 1e3:.1f} ms: "
                  f"kmod {ratio:.2f}x faster than CRIU (target {TARGET:g}x: "
                  f"{'met' if ratio >= TARGET else 'NOT met'})")
    finally:
        harness.kill_processes_under(base)
        shutil.rmtree(base, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
