# SPDX-License-Identifier: MIT
"""Never lose the target: whatever happens to `spice dump` (an error at any step, SIGKILL of spice at
any step, including while it executes syscalls inside the task), the tree keeps running exactly as
before -- not stopped, not traced, its state unbroken (the workloads check their memory, pipe, file
position and thread counters on every step) -- and the image directory is marked partial, holding no
image anyone could restore. Bad input fails with one CRIU-style error line, exit 1, no traceback.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import harness
import pytest
from harness import assert_continues
from spice import REPO, assert_one_error

STEPS = ("frozen", "in-task", "mappings", "files", "pages", "cores", "images", "commit")


def run_dump(pid: int, images: Path, *extra: str, fault: str | None = None,
             timeout: float = 120) -> subprocess.CompletedProcess[str]:
    images.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.pop("SPICE_DUMP_FAULT", None)
    if fault:
        env["SPICE_DUMP_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "spice_criu", "dump", "-t", str(pid), "-D", str(images),
                           "-v4", "-o", "dump.log", *extra], capture_output=True, text=True, cwd=REPO, env=env,
                          timeout=harness.scaled(timeout), stdin=subprocess.DEVNULL)


def status(pid: int, key: str) -> str:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return line.split(":", 1)[1].strip()
    raise KeyError(key)


def assert_untouched(wl: harness.Workload) -> None:
    """Every process of the workload runs, untraced, not stopped, and its run goes on unbroken."""
    for p in wl.pids:
        assert status(p, "TracerPid") == "0", f"{p} is still traced"
        assert harness.process_state(p) not in ("T", "t", "Z", None), f"{p} is {harness.process_state(p)}"
    wl.wait_ticks(3)
    assert_continues(wl)


def assert_partial(images: Path) -> None:
    left = sorted(p.name for p in images.iterdir() if p.name != "dump.log")
    assert left == ["spice-dump.partial"], f"a failed dump must leave only its marker, found {left}"


@pytest.mark.parametrize("step", STEPS)
def test_failure_at_any_step_leaves_the_tree_running(step: str, workload_factory) -> None:
    wl = workload_factory("tree" if step in ("files", "cores") else "threads")
    images = wl.rundir / f"images-fail-{step}"
    p = run_dump(wl.pid, images, fault=step)
    assert_one_error(p, "dump", f"fault injected at step {step}")
    assert_partial(images)
    assert_untouched(wl)
    # and the same tree is still dumpable afterwards
    ok = run_dump(wl.pid, wl.rundir / f"images-after-{step}", "--leave-running")
    assert ok.returncode == 0, ok.stderr
    assert_untouched(wl)


@pytest.mark.parametrize("step", ("frozen", "in-task", "files", "pages", "commit"))
@pytest.mark.parametrize("name", ("counter", "threads"))
def test_sigkill_of_spice_mid_dump_leaves_the_tree_running(name: str, step: str, workload_factory) -> None:
    """SIGKILL of spice itself at a step (in-task: while a syscall is injected in the task, its
    trampoline mapped): the kernel detaches, the tree runs on exactly where it was."""
    wl = workload_factory(name)
    images = wl.rundir / f"images-kill-{step}"
    p = run_dump(wl.pid, images, fault=f"{step}:kill")
    assert p.returncode == -signal.SIGKILL, (p.returncode, p.stderr)
    assert (images / "spice-dump.partial").exists(), "a partial dump keeps its marker"
    assert not (images / "inventory.img").exists()
    assert_untouched(wl)


def test_sigkill_from_outside_while_dumping(workload_factory) -> None:
    """spice stalled in the middle of writing pages, killed by someone else."""
    wl = workload_factory("counter")
    images = wl.rundir / "images-stall"
    images.mkdir()
    env = {**os.environ, "SPICE_DUMP_FAULT": "pages:stall"}
    proc = subprocess.Popen([sys.executable, "-m", "spice_criu", "dump", "-t", str(wl.pid), "-D", str(images)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=REPO, env=env, text=True)
    try:
        assert proc.stdout is not None
        assert "spice-dump-stalled pages" in proc.stdout.readline()
        for p in wl.pids:
            assert status(p, "TracerPid") == str(proc.pid), "the tree is frozen while spice stalls"
        time.sleep(0.3)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert_untouched(wl)
    assert not (images / "inventory.img").exists()


def test_unknown_pid(tmp_path: Path) -> None:
    pid = 4_000_000  # above pid_max (4194304 is the largest possible; 4M is never reached in tests)
    p = run_dump(pid, tmp_path / "img")
    assert_one_error(p, "dump", f"No process with pid {pid}")
    assert not (tmp_path / "img" / "inventory.img").exists()


def test_thread_id_is_refused(workload_factory, tmp_path: Path) -> None:
    wl = workload_factory("threads")
    tid = max(int(t) for t in os.listdir(f"/proc/{wl.pid}/task"))
    assert tid != wl.pid
    p = run_dump(tid, tmp_path / "img")
    assert_one_error(p, "dump", f"pid {tid} is a thread of process {wl.pid}")
    assert_untouched(wl)


def test_missing_images_dir(workload_factory, tmp_path: Path) -> None:
    wl = workload_factory("counter")
    p = subprocess.run([sys.executable, "-m", "spice_criu", "dump", "-t", str(wl.pid), "-D",
                        str(tmp_path / "nope")], capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert "Error (spice/" in p.stderr and "nope" in p.stderr
    assert_untouched(wl)


def test_leave_stopped(workload_factory) -> None:
    wl = workload_factory("tree")
    images = wl.rundir / "images-stopped"
    p = run_dump(wl.pid, images, "--leave-stopped")
    assert p.returncode == 0, p.stderr
    time.sleep(0.3)
    for pid in wl.pids:
        assert harness.process_state(pid) == "T", f"{pid} should be left stopped"
        assert status(pid, "TracerPid") == "0"
    lines_before = len(wl.lines())
    time.sleep(0.3)
    assert len(wl.lines()) == lines_before, "a stopped tree writes nothing"
    for pid in wl.pids:
        os.kill(pid, signal.SIGCONT)
    assert_untouched(wl)


def test_leave_running_then_default_kill(workload_factory) -> None:
    wl = workload_factory("counter")
    p = run_dump(wl.pid, wl.rundir / "images-lr", "--leave-running")
    assert p.returncode == 0, p.stderr
    assert_untouched(wl)
    pids = wl.pids
    p = run_dump(wl.pid, wl.rundir / "images-kill")
    assert p.returncode == 0, p.stderr
    harness.reap(pids, timeout=10)
    assert all(harness.process_state(x) is None for x in pids)


def test_work_dir_log_and_display_stats(workload_factory, tmp_path: Path) -> None:
    wl = workload_factory("counter")
    images, work = tmp_path / "img", tmp_path / "work"
    images.mkdir()
    work.mkdir()
    p = subprocess.run([sys.executable, "-m", "spice_criu", "dump", "-t", str(wl.pid), "-D", str(images), "-W",
                        str(work), "-o", "d.log", "-v4", "--leave-running", "--display-stats"],
                       capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 0, p.stderr
    assert (work / "stats-dump").exists() and not (images / "stats-dump").exists()
    assert (work / "d.log").exists() and "Dumping finished successfully" in (work / "d.log").read_text()
    assert "Memory pages written:" in p.stdout and "Freezing time:" in p.stdout
    assert_untouched(wl)
