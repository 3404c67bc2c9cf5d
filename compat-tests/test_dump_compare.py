# SPDX-License-Identifier: MIT
"""The same process dumped by real CRIU 4.2.1 and by spice (both --leave-running): the images, as
real crit decodes them, agree on every field that is not time-dependent.

Two ways to hold "the same process": stopped (SIGSTOP before both dumps, SIGCONT after: nothing the
task does can change between the dumps, so everything but the ALLOWED differences below must be
equal, memory page by page), and running (the C workloads left running between the dumps: registers,
file positions and memory contents move on, the rest must still be equal). After both dumps the
workload must go on unharmed. CRIU dumps first: its parasite bootstrap copies-on-write one page of
the first executable mapping, which spice (no parasite) never touches; this way both see that page.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import harness
import pytest
from harness import criu_dump
from spice import spice

PAGE = 4096

#: Differences allowed between a CRIU and a spice image of the same stopped process, per image kind
#: (paths with list indices as [*]). Everything else must be equal.
ALLOWED: dict[str, dict[str, str]] = {
    "INVENTORY": {
        "entries[*].dump_criu_run_id": "a random id per dump run",
    },
    "TIMENS": {
        "entries[*].monotonic.tv_sec": "CLOCK_MONOTONIC at dump time",
        "entries[*].monotonic.tv_nsec": "CLOCK_MONOTONIC at dump time",
        "entries[*].boottime.tv_sec": "CLOCK_BOOTTIME at dump time",
        "entries[*].boottime.tv_nsec": "CLOCK_BOOTTIME at dump time",
    },
    "STATS": {
        "entries[*].dump.freezing_time": "durations",
        "entries[*].dump.frozen_time": "durations",
        "entries[*].dump.memdump_time": "durations",
        "entries[*].dump.memwrite_time": "durations",
        "entries[*].dump.page_pipes": "CRIU's page-pipe internals (spice copies without page pipes)",
        "entries[*].dump.page_pipe_bufs": "CRIU's page-pipe internals",
        "entries[*].dump.pages_scanned": "CRIU counts iterations of its PAGEMAP_SCAN loop (one per skipped "
                                         "gap); spice counts the pages of the mappings it scanned",
    },
    "PAGEMAP": {
        "entries": "compared page by page instead (PAGEMAP_PAGES): CRIU splits runs at its page-pipe "
                   "buffer boundaries; CRIU 4.2.1 writes compat_nr_pages=0, spice writes the count in "
                   "both fields so CRIU < 4.2 can read its images",
    },
}
#: Per page: the set of pages, their PE_* flags and their bytes are equal, except the bytes of each
#: thread's struct rseq (cpu_id_start, cpu_id, node_id, mm_cid: the kernel rewrites them whenever the
#: thread runs, and both dumpers run every thread briefly).
PAGEMAP_PAGES = "rseq areas"

#: Additionally allowed when the process runs between the two dumps.
ALLOWED_RUNNING: dict[str, dict[str, str]] = {
    "CORE": {
        "entries[*].thread_info.gpregs.*": "registers at another instant",
        "entries[*].thread_info.fpregs.*": "FPU state at another instant",
        "entries[*].tc.timers.*": "time left on timers",
    },
    "FILES": {"entries[*].reg.pos": "file positions move on (the workloads read and append every step)"},
    "PIPES_DATA": {"entries[*].bytes": "data in flight", "entries[*].extra": "data in flight"},
    "STATS": {"entries[*].dump.pages_written": "pages touched meanwhile",
              "entries[*].dump.shpages_written": "pages touched meanwhile"},
}


#: run through the crit wrapper in place of its python (CRIT_PYTHON): decode many images with the real
#: pycriu of CRIU 4.2.1 in one process, as `crit decode --pretty` would, one JSON per file
_SHIM = """#!/bin/sh
shift 2
exec python3 -c '
import json, sys
from pycriu import images
out = {}
for f in sys.argv[2:]:
    with open(f, "rb") as fh:
        out[f] = images.load(fh, True)
with open(sys.argv[1], "w") as fh:
    json.dump(out, fh)
' "$@"
"""
_cache: dict[Path, dict[str, Any]] = {}


def decode_all(crit: Path, files: list[Path]) -> None:
    """Decode files with real crit (its wrapper and pycriu), in one process, into the cache."""
    todo = [f for f in files if f not in _cache]
    if not todo:
        return
    work = todo[0].parent
    shim = work / ".crit-shim"
    shim.write_text(_SHIM)
    shim.chmod(0o755)
    out = work / ".crit-decoded.json"
    p = subprocess.run([str(crit), str(out), *map(str, todo)], env={**os.environ, "CRIT_PYTHON": str(shim)},
                       capture_output=True, text=True, timeout=harness.scaled(600))
    assert p.returncode == 0 and out.exists(), f"real crit could not decode {work}: {p.stderr[-2000:]}"
    for k, v in json.loads(out.read_text()).items():
        _cache[Path(k)] = v
    shim.unlink()
    out.unlink()


def _decode(crit: Path, img: Path) -> dict[str, Any]:
    if img not in _cache:
        decode_all(crit, [img])
    return _cache[img]


def _generic(path: str) -> str:
    return re.sub(r"\[\d+\]", "[*]", path)


def _allowed(magic: str, path: str, rules: list[dict[str, dict[str, str]]]) -> bool:
    g = _generic(path)
    for r in rules:
        for pat in r.get(magic, {}):
            if g == pat or g.startswith(pat + ".") or g.startswith(pat + "[") or \
                    (pat.endswith(".*") and g.startswith(pat[:-1])):
                return True
    return False


def diff(a: Any, b: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    """Every leaf where two decoded images differ: (path, criu value, spice value)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += diff(a.get(k, "<absent>"), b.get(k, "<absent>"), f"{path}.{k}" if path else k)
        return out
    if isinstance(a, list) and isinstance(b, list):
        out = [] if len(a) == len(b) else [(f"{path}.length", len(a), len(b))]
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            out += diff(x, y, f"{path}[{i}]")
        return out
    return [] if a == b else [(path, a, b)]


def _pages(d: Path, pagemap: dict[str, Any]) -> dict[int, tuple[str, bytes]]:
    ents = pagemap["entries"]
    out: dict[int, tuple[str, bytes]] = {}
    with open(d / f"pages-{ents[0]['pages_id']}.img", "rb") as f:
        for e in ents[1:]:
            n = e["nr_pages"] or e["compat_nr_pages"]
            vaddr = int(e["vaddr"], 16) if isinstance(e["vaddr"], str) else e["vaddr"]
            flags = " | ".join(sorted(str(e["flags"]).split(" | ")))
            data = f.read(n * PAGE) if "PE_PRESENT" in flags else b"\0" * (n * PAGE)
            for i in range(n):
                out[vaddr + i * PAGE] = (flags, data[i * PAGE:(i + 1) * PAGE])
    return out


def _rseq_areas(crit: Path, d: Path) -> list[tuple[int, int]]:
    out = []
    for core in d.glob("core-*.img"):
        tc = _decode(crit, core)["entries"][0].get("thread_core", {})
        r = tc.get("rseq_entry")
        if r and r["rseq_abi_pointer"]:
            out.append((r["rseq_abi_pointer"], r["rseq_abi_pointer"] + max(r["rseq_abi_size"], 32)))
    return out


def compare_pages(crit: Path, criu_dir: Path, spice_dir: Path, name: str,
                  criu_pm: dict[str, Any], spice_pm: dict[str, Any]) -> list[str]:
    a, b = _pages(criu_dir, criu_pm), _pages(spice_dir, spice_pm)
    problems = []
    if set(a) != set(b):
        only_a = sorted(set(a) - set(b))[:5]
        only_b = sorted(set(b) - set(a))[:5]
        problems.append(f"{name}: pages only CRIU wrote {[hex(x) for x in only_a]}, only spice "
                        f"{[hex(x) for x in only_b]}")
    masks = _rseq_areas(crit, spice_dir) if not name.startswith("pagemap-shmem-") else []
    for addr in sorted(set(a) & set(b)):
        (fa, da), (fb, db) = a[addr], b[addr]
        if fa != fb:
            problems.append(f"{name}: page {addr:#x} flags {fa} (CRIU) vs {fb} (spice)")
        elif da != db:
            bad = [addr + i for i in range(PAGE) if da[i] != db[i]]
            bad = [x for x in bad if not any(lo <= x < hi for lo, hi in masks)]
            if bad:
                problems.append(f"{name}: page {addr:#x} bytes differ at {bad[0]:#x}..{bad[-1]:#x}")
    return problems


def compare_dirs(crit: Path, criu_dir: Path, spice_dir: Path, running: bool,
                 extra_allowed: dict[str, dict[str, str]] | None = None) -> list[str]:
    """Human-readable differences not covered by the allowed lists (empty: the dumps agree)."""
    rules = [ALLOWED] + ([ALLOWED_RUNNING] if running else []) + ([extra_allowed] if extra_allowed else [])

    def names(d: Path) -> set[str]:
        return {p.name for p in d.iterdir()
                if (p.suffix == ".img" and not p.name.startswith("pages-")) or p.name == "stats-dump"}

    problems = []
    na, nb = names(criu_dir), names(spice_dir)
    for d, ns in ((criu_dir, na), (spice_dir, nb)):
        decode_all(crit, [d / n for n in sorted(ns)] + sorted(d.glob("core-*.img")))
    if na != nb:
        problems.append(f"image sets differ: only CRIU {sorted(na - nb)}, only spice {sorted(nb - na)}")
    for n in sorted(na & nb):
        a, b = _decode(crit, criu_dir / n), _decode(crit, spice_dir / n)
        magic = a["magic"]
        if magic == "PAGEMAP" and not running:
            problems += compare_pages(crit, criu_dir, spice_dir, n, a, b)
        for path, x, y in diff(a, b):
            if not _allowed(magic, path, rules):
                problems.append(f"{n}: {path}: CRIU {str(x)[:80]} != spice {str(y)[:80]}")
    return problems


def _stop(pids: list[int]) -> None:
    for p in pids:
        os.kill(p, signal.SIGSTOP)
    deadline = time.monotonic() + harness.scaled(10)
    while not all(harness.process_state(p) == "T" for p in pids):
        assert time.monotonic() < deadline, "workload did not stop"
        time.sleep(0.005)


def dump_both(root: int, pids: list[int], base: Path, stopped: bool, criu_extra: tuple[str, ...] = (),
              spice_extra: tuple[str, ...] = ()) -> tuple[Path, Path]:
    """`criu dump --leave-running` then `spice dump --leave-running` of the tree at root, into
    base/criu and base/spice; stopped: SIGSTOP the pids before and SIGCONT them after."""
    criu_dir, spice_dir = base / "criu", base / "spice"
    spice_dir.mkdir(parents=True)
    if stopped:
        _stop(pids)
    try:
        criu_dump(root, criu_dir, leave_running=True, extra_args=criu_extra)
        spice("dump", "-t", str(root), "-D", str(spice_dir), "-v4", "-o", "dump.log", "--leave-running",
              *spice_extra, log=spice_dir / "dump.log")
        if stopped:
            assert all(harness.process_state(p) == "T" for p in pids), "a stopped tree must stay stopped"
    finally:
        if stopped:
            for p in pids:
                os.kill(p, signal.SIGCONT)
    return criu_dir, spice_dir


def dump_workload_both(wl: harness.Workload, base: Path, stopped: bool) -> tuple[Path, Path]:
    dirs = dump_both(wl.pid, wl.pids, base, stopped)
    wl.wait_ticks(3)  # both --leave-running dumps left it running, unharmed
    wl.check()
    return dirs


def test_stopped_process_images_agree(workload_name: str, workload_factory, compat_tmp: Path,
                                      crit_bin: Path) -> None:
    wl = workload_factory(workload_name)
    criu_dir, spice_dir = dump_workload_both(wl, wl.rundir / "cmp-stopped", stopped=True)
    problems = compare_dirs(crit_bin, criu_dir, spice_dir, running=False)
    assert not problems, "\n".join(problems[:40])
    core = _decode(crit_bin, spice_dir / f"core-{wl.pid}.img")["entries"][0]
    assert core["tc"]["task_state"] == "Zombie"  # crit's name for TASK_STOPPED (3), see criu-interfaces §0.7


@pytest.mark.parametrize("name", ["counter", "threads", "tree"])
def test_running_process_images_agree(name: str, workload_factory, crit_bin: Path) -> None:
    wl = workload_factory(name)
    criu_dir, spice_dir = dump_workload_both(wl, wl.rundir / "cmp-running", stopped=False)
    problems = compare_dirs(crit_bin, criu_dir, spice_dir, running=True)
    assert not problems, "\n".join(problems[:40])
    core = _decode(crit_bin, spice_dir / f"core-{wl.pid}.img")["entries"][0]
    assert core["tc"]["task_state"] == "Alive"


def test_comparator_catches_differences(workload_factory, crit_bin: Path, tmp_path: Path) -> None:
    """The comparison is not vacuous: a doctored spice image (one VMA flag, one page byte) is caught."""
    wl = workload_factory("counter")
    criu_dir, spice_dir = dump_workload_both(wl, wl.rundir / "cmp-doctored", stopped=True)
    from spice_criu.images import codec

    mm = spice_dir / f"mm-{wl.pid}.img"
    img = codec.load(mm)
    img.entries[0].msg.vmas[0].prot ^= 4
    codec.dump(mm, img)
    pm = _decode(crit_bin, spice_dir / f"pagemap-{wl.pid}.img")
    pages_file = spice_dir / f"pages-{pm['entries'][0]['pages_id']}.img"
    data = bytearray(pages_file.read_bytes())
    data[100] ^= 0xFF
    pages_file.write_bytes(bytes(data))
    problems = compare_dirs(crit_bin, criu_dir, spice_dir, running=False)
    assert any(".vmas[0].prot" in p for p in problems), problems
    assert any("bytes differ" in p for p in problems), problems
