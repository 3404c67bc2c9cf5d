# SPDX-License-Identifier: MIT
"""Issue 3, state by state: the kstate workload (signals, timers, creds, limits, fs, memory
attributes, queued fifo/socket data, a second thread) is dumped by real CRIU and restored by spice.
It checks its own state every tick; the test also compares what /proc shows before and after."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest
from harness import DumpInfo, assert_continues, criu_restore, dump_workload, kill_restored
from spice import spice_restore

# /proc/PID/status fields that must come back exactly
STATUS = ("Umask", "SigPnd", "ShdPnd", "SigBlk", "SigIgn", "SigCgt", "CapInh", "CapPrm", "CapEff",
          "CapBnd", "CapAmb", "NoNewPrivs", "Uid", "Gid", "Groups", "Threads")
# /proc/PID/stat fields (1-based, after the comm): nice, start/end code, start stack, data, brk, arg, env
STAT_FIELDS = (19, 26, 27, 28, 45, 46, 47, 48, 49, 50, 51)


def _status(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in STATUS:
            out[k] = " ".join(v.split())
    return out


def _stat(pid: int) -> dict[int, str]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return {i: fields[i - 3] for i in STAT_FIELDS}


def _maps(pid: int) -> list[str]:
    # address, perms, offset and path: what the restored address space must reproduce
    return [re.sub(r"^(\S+) (\S+) (\S+) \S+ \S+\s*(.*)$", r"\1 \2 \3 \4", ln)
            for ln in Path(f"/proc/{pid}/maps").read_text().splitlines()]


def _fds(pid: int) -> list[tuple[str, str]]:
    """The fd table; new sockets/pipes get new inode numbers (the kind is compared), and the files
    the workload opens under /proc/self for a moment on every tick are left out."""
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue  # closed meanwhile
        if not target.startswith("/proc/"):
            out.append((fd, re.sub(r":\[\d+\]$", "", target)))
    return sorted(out)


def _snapshot(pid: int) -> dict[str, object]:
    tids = sorted(os.listdir(f"/proc/{pid}/task"))
    return {
        "status": _status(pid),
        "stat": _stat(pid),
        "limits": Path(f"/proc/{pid}/limits").read_text(),
        "personality": Path(f"/proc/{pid}/personality").read_text(),
        "cwd": os.readlink(f"/proc/{pid}/cwd"),
        "exe": os.readlink(f"/proc/{pid}/exe"),
        "auxv": Path(f"/proc/{pid}/auxv").read_bytes(),
        "maps": _maps(pid),
        "threads": [(t, Path(f"/proc/{pid}/task/{t}/comm").read_text()) for t in tids],
        "thread_masks": [Path(f"/proc/{pid}/task/{t}/status").read_text().split("SigBlk:")[1].split()[0]
                         for t in tids],
        "fds": _fds(pid),
    }


@pytest.fixture(scope="module")
def kstate_dump(criu_bin: Path, compat_tmp: Path, request) -> tuple[DumpInfo, dict[str, object]]:
    from harness import start_workload

    wl = start_workload("kstate", compat_tmp / "kstate" / "run")
    try:
        wl.wait_ticks(3)
        before = _snapshot(wl.pid)
        images = compat_tmp / "kstate" / "images"
        images.mkdir(parents=True)
        info = dump_workload(wl, images)
    except BaseException:
        wl.kill()
        raise
    return info, before


def _compare(before: dict[str, object], pid: int) -> None:
    """Signal masks change while a handler runs (the timers fire every 50/70 ms): a difference
    must persist over several snapshots to count."""
    for _ in range(10):
        after = _snapshot(pid)
        if after == before:
            return
        time.sleep(0.013)
    for key in before:
        assert after[key] == before[key], f"{key} differs after restore:\nbefore {before[key]}\nafter  {after[key]}"


def test_real_criu_restores_kstate(kstate_dump) -> None:
    """The workload itself is sound: real CRIU's restore passes its checks."""
    info, _ = kstate_dump
    pid = criu_restore(info.images_dir)
    assert_continues(info, pid)
    kill_restored(info, pid)


def test_spice_restores_kernel_state(kstate_dump) -> None:
    info, before = kstate_dump
    pid = spice_restore(info.images_dir)
    assert pid == info.pid
    assert_continues(info, pid)
    _compare(before, pid)
    kill_restored(info, pid)
