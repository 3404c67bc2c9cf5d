# SPDX-License-Identifier: MIT
"""`spice dump --leave-running` leaves the task exactly as it was: registers (every callee-saved and
syscall-preserved register checked by the target itself), FPU, its blocking syscall (which goes on
with the time it had left, no EINTR), its mappings, and its memory byte for byte (but for the struct
rseq fields the kernel itself rewrites whenever a thread runs). Also after a failed dump and after
SIGKILL of spice in the middle of injecting syscalls."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from progs import Target, state

from spice_criu.linux import procvm

REPO = Path(__file__).resolve().parents[1]


def dump(pid: int, images: Path, *extra: str, fault: str | None = None) -> subprocess.CompletedProcess[str]:
    images.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "SPICE_DUMP_FAULT"}
    if fault:
        env["SPICE_DUMP_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "spice_criu", "dump", "-t", str(pid), "-D", str(images),
                           "--leave-running", "-v4", "-o", "dump.log", *extra],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=120)


def rseq_areas(pid: int) -> list[tuple[int, int]]:
    """Each thread's struct rseq (the kernel keeps cpu_id etc. there), from our own dump's cores."""
    from spice_criu.images import codec

    out = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        img = Path(f"/tmp/spice-exact-{pid}") / f"core-{tid}.img"
        if img.exists():
            r = codec.load(img).entries[0].msg.thread_core.rseq_entry
            if r.rseq_abi_pointer:
                out.append((r.rseq_abi_pointer, r.rseq_abi_pointer + 32))
    return out


def snapshot(pid: int) -> tuple[str, str, dict[int, bytes]]:
    """(/proc/PID/maps, /proc/PID/syscall, every readable private writable mapping's bytes)."""
    with open(f"/proc/{pid}/maps") as f:
        maps = f.read()
    with open(f"/proc/{pid}/syscall") as f:
        sysc = f.read()
    mem = {}
    for line in maps.splitlines():
        parts = line.split()
        lo, hi = (int(x, 16) for x in parts[0].split("-"))
        if parts[1].startswith("rw") and hi - lo <= 64 << 20:
            mem[lo] = procvm.read_any(pid, lo, hi - lo)
    return maps, sysc, mem


def assert_same_memory(before: dict[int, bytes], after: dict[int, bytes], masks: list[tuple[int, int]]) -> None:
    assert before.keys() == after.keys()
    for lo, a in before.items():
        b = after[lo]
        if a == b:
            continue
        bad = [lo + i for i in range(len(a)) if a[i] != b[i] and not any(m0 <= lo + i < m1 for m0, m1 in masks)]
        assert not bad, f"memory changed at {bad[0]:#x}..{bad[-1]:#x} ({len(bad)} bytes)"


#: blocking mode -> what the syscall returns when it runs its course (futex: -ETIMEDOUT)
EXPECT = {"sleep": 0, "clock": 0, "futex": -110, "poll": 0, "read": 6}


@pytest.mark.parametrize("mode", sorted(EXPECT))
def test_blocked_syscall_goes_on_after_a_dump(mode: str, tmp_path: Path) -> None:
    with Target.prog("blocker", mode, "1200", stdin=subprocess.PIPE) as t:
        t.wait_for("ready")
        p = dump(t.pid, tmp_path / "img")
        assert p.returncode == 0, p.stderr
        assert state(t.pid) in ("S", "R")
        if mode == "read":
            t.proc.stdin.write(b"hello\n")
            t.proc.stdin.flush()
            m = t.wait_for(r"done ret=(-?\d+) bad=(\w+) ms=([\d.]+) data=(\S*)", timeout=10)
            assert m.group(4) == "hello"
        else:
            m = t.wait_for(r"done ret=(-?\d+) bad=(\w+) ms=([\d.]+)", timeout=10)
            assert float(m.group(3)) >= 1100, f"the syscall ended early: {m.group(0)}"
        assert int(m.group(1)) == EXPECT[mode], f"interrupted: {m.group(0)}"
        assert int(m.group(2), 16) == 0, f"registers clobbered: {m.group(0)}"


def test_registers_maps_and_memory_unchanged(tmp_path: Path) -> None:
    with Target.prog("blocker", "read", stdin=subprocess.PIPE) as t:
        t.wait_for("ready")
        maps0, sys0, mem0 = snapshot(t.pid)
        images = Path(f"/tmp/spice-exact-{t.pid}")
        try:
            p = dump(t.pid, images)
            assert p.returncode == 0, p.stderr
            maps1, sys1, mem1 = snapshot(t.pid)
            assert maps1 == maps0, "mappings changed (a leftover trampoline?)"
            assert sys1 == sys0, "the blocked syscall or its registers changed"
            assert_same_memory(mem0, mem1, rseq_areas(t.pid))
        finally:
            subprocess.run(["rm", "-rf", str(images)])
        t.proc.stdin.write(b"x\n")
        t.proc.stdin.flush()
        m = t.wait_for(r"done ret=(-?\d+) bad=(\w+)", timeout=10)
        assert m.group(1) == "2" and int(m.group(2), 16) == 0, m.group(0)


def test_fpu_and_r15_survive(tmp_path: Path) -> None:
    with Target.prog("fpu") as t:
        t.wait_for("ready")
        t.wait_for("xmm15=", count=3)
        for i in range(3):
            p = dump(t.pid, tmp_path / f"img{i}")
            assert p.returncode == 0, p.stderr
        n = len(t.lines())
        t.wait_for("xmm15=", count=n + 5)
        assert set(t.lines()[1:]) == {"xmm15=1111222233334444 r15=1111222233334444"}


def test_spin_checks_hold_across_repeated_dumps(tmp_path: Path) -> None:
    """spin verifies its registers around every nanosleep and a buffer checksum; eintr counts
    nanosleeps that returned early: a dump must not cause any."""
    with Target.prog("spin", "2000") as t:
        t.wait_for("n=")
        for i in range(5):
            p = dump(t.pid, tmp_path / f"img{i}")
            assert p.returncode == 0, p.stderr
        m = t.wait_for(r"n=(\d+) sum=\S+ bad=(\d+) eintr=(\d+)", count=len(t.lines()) + 2)
        assert m.group(2) == "0" and m.group(3) == "0", m.group(0)
        assert t.proc.poll() is None


@pytest.mark.parametrize("fault", ["in-task", "in-task:kill", "pages", "pages:kill"])
def test_failed_or_killed_dump_keeps_the_task_exact(fault: str, tmp_path: Path) -> None:
    with Target.prog("blocker", "clock", "1500") as t:
        t.wait_for("ready")
        p = dump(t.pid, tmp_path / "img", fault=fault)
        assert p.returncode == (-signal.SIGKILL if fault.endswith(":kill") else 1), p.stderr
        m = t.wait_for(r"done ret=(-?\d+) bad=(\w+) ms=([\d.]+)", timeout=10)
        assert int(m.group(2), 16) == 0, f"registers clobbered: {m.group(0)}"
        assert m.group(1) == "0" and float(m.group(3)) >= 1400, f"the syscall was cut short: {m.group(0)}"


def test_threads_with_churn(tmp_path: Path) -> None:
    """Threads and children come and go while the tree is frozen and dumped."""
    with Target.prog("threads", "4", "churn") as t:
        t.wait_for("ready")
        for i in range(3):
            p = dump(t.pid, tmp_path / f"img{i}")
            assert p.returncode == 0, p.stderr
        first = len(t.lines())
        m = t.wait_for(r"tick (\d+)", count=first + 3)
        assert int(m.group(1)) > 0 and t.proc.poll() is None


def test_stack_and_xsave_in_the_image(tmp_path: Path) -> None:
    """The core image holds what the task holds: fpu's xmm15 and r15 (registers read from outside)."""
    from spice_criu.images import codec

    with Target.prog("fpu") as t:
        t.wait_for("xmm15=", count=2)
        p = dump(t.pid, tmp_path / "img")
        assert p.returncode == 0, p.stderr
        core = codec.load(tmp_path / "img" / f"core-{t.pid}.img").entries[0].msg
        regs = core.thread_info.gpregs
        assert regs.r15 == 0x1111222233334444
        xmm = core.thread_info.fpregs.xmm_space
        assert struct.pack("<2I", xmm[60], xmm[61]) == struct.pack("<Q", 0x1111222233334444)
        assert core.thread_core.comm.startswith("fpu") and core.tc.comm == core.thread_core.comm
        assert len(core.tc.sigactions) == 62


def test_freeze_timeout_lets_the_tree_go(tmp_path: Path) -> None:
    """A task that cannot stop (the parent of a vfork, waiting for its frozen child) makes the freeze
    time out after --timeout: one error line, and parent and child go on as if nothing happened."""
    import time

    with Target.prog("blocker", "vfork", "6000") as t:
        t.wait_for("ready")
        time.sleep(0.1)
        t0 = time.monotonic()
        p = dump(t.pid, tmp_path / "img", "--timeout", "1")
        assert p.returncode == 1 and "Timed out" in p.stderr and "Traceback" not in p.stderr, p.stderr
        assert time.monotonic() - t0 < 10
        m = t.wait_for(r"done ret=(-?\d+) bad=(\w+)", timeout=20)
        assert m.group(1) == "0", m.group(0)
        assert not (tmp_path / "img" / "inventory.img").exists()
