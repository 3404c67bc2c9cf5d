# SPDX-License-Identifier: MIT
"""Restore over RPC, spice swrk vs real `criu swrk`, pycriu as the client: `make bench-rpc`.

Same CRIU-made image dirs, same run, interleaved. Measured from the client's side (pycriu forks and
execs the binary, sends RESTORE with rst_sibling, gets the reply with the pid), plus a VERSION round
trip (the start-up cost of the swrk process alone) and each tool's own restore_time (stats-restore).
No timing assertions anywhere (speed targets live in benchmarks); test_rpc_pycriu.py's
test_rpc_bench_loop_restores_with_both_tools proves this loop restores correctly with both tools.
BENCH_N (default 10) runs per tool and workload.
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import harness
from test_rpc_pycriu import REPO, dir_fd, load_pycriu

from spice_criu.images import stats

BENCH_WORKLOADS = ("counter", "pyholder")


def _stats_restore_ms(images: Path) -> float:
    return stats.read(images / "stats-restore").restore.restore_time / 1e3


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _checked(info: harness.DumpInfo, pid: int, check: bool, wall: float, cpu: float) -> tuple[float, float, float]:
    """The restored tree is ours and (when checked) continues; killed either way. Returns the sample in ms."""
    try:
        assert pid == info.pid and harness.parent_of(pid) == os.getpid()
        if check:
            harness.assert_continues(info, pid)
    finally:
        harness.kill_restored(info, pid)
    return wall * 1e3, cpu * 1e3, _stats_restore_ms(info.images_dir)


def _restore_once(pycriu: Any, binary: Path, info: harness.DumpInfo, check: bool) -> tuple[float, float, float]:
    """(client wall ms, CPU ms of the swrk process, the tool's own restore_time ms)"""
    c = pycriu.criu()
    c.use_binary(str(binary))
    with dir_fd(info.images_dir) as fd:
        c.opts = pycriu.rpc.criu_opts(images_dir_fd=fd, rst_sibling=True, log_file="restore-bench.log", log_level=2)
        cpu0 = _cpu()
        t0 = time.perf_counter()
        pid = c.restore().pid  # returns after pycriu has reaped the swrk process
        wall = time.perf_counter() - t0
        cpu = _cpu() - cpu0
    return _checked(info, pid, check, wall, cpu)


def _cli_restore_once(binary: Path, info: harness.DumpInfo, check: bool) -> tuple[float, float, float]:
    """The same restore from the command line (`restore -d -S`), for the cost of RPC itself."""
    pidfile = info.images_dir / "bench-cli.pid"
    pidfile.unlink(missing_ok=True)
    cmd = [str(binary), "restore", "-D", str(info.images_dir), "-d", "-S", "--pidfile", str(pidfile),
           "-o", "restore-bench-cli.log"]
    cpu0 = _cpu()
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    cpu = _cpu() - cpu0
    pid = int(pidfile.read_text())
    return _checked(info, pid, check, wall, cpu)


def _version_once(pycriu: Any, binary: Path) -> tuple[float, float]:
    c = pycriu.criu()
    c.use_binary(str(binary))
    req = pycriu.rpc.criu_req(type=pycriu.rpc.VERSION)
    cpu0 = _cpu()
    t0 = time.perf_counter()
    resp = c._send_req_and_recv_resp(req)
    wall = time.perf_counter() - t0
    assert resp.success
    return wall * 1e3, (_cpu() - cpu0) * 1e3


def run(n: int, base: Path, spice: Path, criu: Path, pycriu: Any, check_all: bool = False) -> dict[str, Any]:
    """{workload: {tool: {"wall": [...], "tool": [...]}}, "version": {tool: [...]}}"""
    tools = {"spice": spice, "criu": criu}
    out: dict[str, Any] = {"version": {t: {"wall": [], "cpu": []} for t in tools}}
    for _ in range(n):
        for name, binary in tools.items():
            wall, cpu = _version_once(pycriu, binary)
            out["version"][name]["wall"].append(wall)
            out["version"][name]["cpu"].append(cpu)
    for wname in BENCH_WORKLOADS:
        wl = harness.start_workload(wname, base / wname)
        info = harness.dump_workload(wl, wl.rundir / "images", dumper=lambda pid, d, lr: harness.criu_dump(
            pid, d, lr, criu=criu))
        res: dict[str, dict[str, list[float]]] = {
            t: {k: [] for k in ("wall", "cpu", "tool", "cli_wall", "cli_cpu")} for t in tools}
        for i in range(n):
            for name, binary in tools.items():
                check = check_all or i == 0
                wall, cpu, own = _restore_once(pycriu, binary, info, check)
                res[name]["wall"].append(wall)
                res[name]["cpu"].append(cpu)
                res[name]["tool"].append(own)
                wall, cpu, _ = _cli_restore_once(binary, info, check)
                res[name]["cli_wall"].append(wall)
                res[name]["cli_cpu"].append(cpu)
        out[wname] = res
    return out


def report(out: dict[str, Any]) -> str:
    med = statistics.median
    lines = [f"{'what (median ms)':44} {'spice':>10} {'criu':>10} {'spice/criu':>10}"]
    for wname in ("version", *BENCH_WORKLOADS):
        r = out[wname]
        if wname == "version":
            for key, label in (("wall", "VERSION round trip, wall"), ("cpu", "VERSION round trip, swrk CPU")):
                s, c = med(r["spice"][key]), med(r["criu"][key])
                lines.append(f"{label:44} {s:10.1f} {c:10.1f} {s / c:10.2f}")
            continue
        for key, label in (("wall", "RESTORE, client wall"), ("cpu", "RESTORE, swrk CPU (user+sys)"),
                           ("tool", "restore_time (stats-restore)"), ("cli_wall", "CLI restore -d -S, wall"),
                           ("cli_cpu", "CLI restore -d -S, CPU")):
            s, c = med(r["spice"][key]), med(r["criu"][key])
            lines.append(f"{wname + ': ' + label:44} {s:10.1f} {c:10.1f} {s / c:10.2f}")
    return "\n".join(lines)


def main() -> int:
    n = int(os.environ.get("BENCH_N", "10"))
    criu = harness.ensure_criu()
    harness.make_subreaper()
    base = Path(tempfile.mkdtemp(prefix="spice-rpc-bench-"))
    try:
        shim_dir = base / "shim"
        subprocess.run(["make", "-s", "--no-print-directory", "install-criu-shim", f"CRIU_SHIM_DIR={shim_dir}"],
                       cwd=REPO, check=True, stdout=subprocess.DEVNULL)
        out = run(n, base, shim_dir / "criu", criu, load_pycriu())
        print(f"restore over RPC (pycriu client, rst_sibling), median of {n}, load {os.getloadavg()[0]:.2f}")
        print(report(out))
    finally:
        harness.remove_session_dir(base)
    return 0


if __name__ == "__main__":
    sys.exit(main())
