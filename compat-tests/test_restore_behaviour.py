# SPDX-License-Identifier: MIT
"""Issue 3, beyond "it continues": failures clean up after themselves, bad input gives one clear
error line, CRIU's CLI behaviours (no -d, --pidfile, stats) hold, and spice-restored processes
round-trip through real CRIU."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import harness
import pytest
from harness import (
    DumpInfo,
    assert_continues,
    criu_dump,
    criu_restore,
    kill_restored,
    last_by_role,
    process_state,
    read_lines,
    reap_zombie_children,
)
from spice import REPO, assert_one_error, spice, spice_restore

from spice_criu.images import codec, stats
from spice_criu.images.pagemap import read_runs


def _assert_gone(pids) -> None:
    reap_zombie_children()
    left = {p: process_state(p) for p in pids if process_state(p) is not None}
    assert not left, f"half-restored tasks survived: {left}"


@pytest.mark.parametrize("point", ["restore-tree", "restore-mm", "restore-task", "restore-finish", "restore-resume"])
def test_failure_at_any_step_leaves_nothing(point: str, criu_dumps: dict[str, DumpInfo]) -> None:
    info = criu_dumps["tree"]
    env = {**os.environ, "SPICE_FAULT": point}
    p = subprocess.run([sys.executable, "-m", "spice_criu", "restore", "-D", str(info.images_dir), "-d"],
                       capture_output=True, text=True, env=env, cwd=REPO, timeout=60)
    assert_one_error(p, "", f"injected failure at {point}")
    _assert_gone(info.pids)
    # and the image still restores afterwards
    pid = spice_restore(info.images_dir)
    assert_continues(info, pid)
    kill_restored(info, pid)


def test_pid_taken_is_refused(workload_factory, tmp_path: Path) -> None:
    wl = workload_factory("counter")
    criu_dump(wl.pid, tmp_path, leave_running=True)
    p = spice("restore", "-D", str(tmp_path), "-d", check=False)
    assert_one_error(p, "", f"pid {wl.pid}", "already taken")
    assert_continues(wl)  # the running original is untouched


def _copy(info: DumpInfo, dst: Path) -> Path:
    shutil.copytree(info.images_dir, dst, ignore=shutil.ignore_patterns("*.log", "*.pid", "stats-restore"))
    return dst


def test_corrupt_and_missing_images(criu_dumps: dict[str, DumpInfo], tmp_path: Path) -> None:
    info = criu_dumps["counter"]
    core = f"core-{info.pid}.img"
    d = _copy(info, tmp_path / "truncated")
    data = (d / core).read_bytes()
    (d / core).write_bytes(data[: len(data) // 2])
    assert_one_error(spice("restore", "-D", str(d), "-d", check=False), "", core, "offset")

    d = _copy(info, tmp_path / "badmagic")
    (d / f"mm-{info.pid}.img").write_bytes(b"\x19\x43\x56\x54" + b"\x01\x02\x03\x04" + data[8:64])
    assert_one_error(spice("restore", "-D", str(d), "-d", check=False), "", f"mm-{info.pid}.img", "magic")

    d = _copy(info, tmp_path / "nopages")
    for pages in d.glob("pages-*.img"):
        pages.unlink()
    assert_one_error(spice("restore", "-D", str(d), "-d", check=False), "", "pages-")

    d = _copy(info, tmp_path / "nopstree")
    (d / "pstree.img").unlink()
    assert_one_error(spice("restore", "-D", str(d), "-d", check=False), "", "pstree.img")

    assert_one_error(spice("restore", "-D", str(tmp_path / "nonexistent"), "-d", check=False), "", "nonexistent")
    _assert_gone(info.pids)


def test_not_detached_waits_for_the_root(criu_dumps: dict[str, DumpInfo]) -> None:
    info = criu_dumps["counter"]
    proc = subprocess.Popen([sys.executable, "-m", "spice_criu", "restore", "-D", str(info.images_dir)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    try:
        deadline = time.monotonic() + 30
        while process_state(info.pid) is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert_continues(info, info.pid)
        with open(f"/proc/{info.pid}/stat") as f:
            assert int(f.read().rsplit(")", 1)[1].split()[1]) == proc.pid, "spice must stay the root's parent"
        assert proc.poll() is None
        os.kill(info.pid, 9)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        kill_restored(info, info.pid)


def test_pidfile_stats_and_display(criu_dumps: dict[str, DumpInfo]) -> None:
    info = criu_dumps["pyholder"]
    pidfile = info.images_dir / "spice-stats.pid"
    pidfile.unlink(missing_ok=True)
    p = spice("restore", "-D", str(info.images_dir), "-d", "--pidfile", str(pidfile), "--display-stats")
    try:
        assert pidfile.read_text() == str(info.pid)  # no newline, like criu
        st = stats.read(info.images_dir / "stats-restore").restore
        pages = sum(r.nr_pages for f in info.images_dir.glob("pagemap-*.img") for r in read_runs(f)
                    if r.pages_file and not f.name.startswith("pagemap-shmem"))
        vdso = 2  # dumped vDSO pages come from the running kernel instead
        assert pages - vdso <= st.pages_restored <= pages
        assert st.restore_time > 0 and st.forking_time > 0
        assert "Displaying restore stats:" in p.stdout and f"Pages restored: {st.pages_restored}" in p.stdout
        assert codec.load(info.images_dir / "stats-restore").magic == "STATS"
        # a second restore with the same pidfile fails: O_EXCL, like criu
        kill_restored(info, info.pid)
        again = spice("restore", "-D", str(info.images_dir), "-d", "--pidfile", str(pidfile), check=False)
        assert_one_error(again, "", "pidfile")
        _assert_gone(info.pids)
    finally:
        pidfile.unlink(missing_ok=True)
        kill_restored(info, info.pid)


def _redumped(info: DumpInfo, images_dir: Path) -> DumpInfo:
    """The dump point of a re-dump of a restored instance: its last lines before the freeze."""
    lines, end = read_lines(info.out_file, info.resume_offset)
    last = last_by_role(lines)
    ticks = {r: ln.tick for r, ln in last.items()}
    return dataclasses.replace(info, images_dir=images_dir, last_ticks=ticks, last_ticks_max=dict(ticks),
                               pre_dump=last, resume_offset=end)


@pytest.mark.parametrize("name", ["counter", "threads", "tree", "httpd"])
def test_round_trip_through_real_criu(name: str, criu_dumps: dict[str, DumpInfo], tmp_path: Path) -> None:
    """criu dump -> spice restore -> criu dump -> criu restore -> spice dump images restore again."""
    info = criu_dumps[name]
    pid = spice_restore(info.images_dir)
    assert_continues(info, pid)
    again = tmp_path / "again"
    again.mkdir()
    criu_dump(pid, again)
    _assert_gone(info.pids)
    second = _redumped(info, again)
    try:
        pid = criu_restore(again)
        assert_continues(second, pid)
        kill_restored(second, pid)
        pid = spice_restore(again)
        assert_continues(second, pid)
        kill_restored(second, pid)
    finally:
        info.mark()


def test_restore_sibling_makes_the_root_our_child(criu_dumps: dict[str, DumpInfo]) -> None:
    """--restore-sibling (-S, with -d): the restored root is a child of spice's parent, as runc and
    LXC expect; without -d it is refused like criu refuses it."""
    info = criu_dumps["counter"]
    bad = spice("restore", "-D", str(info.images_dir), "--restore-sibling", check=False)
    assert_one_error(bad, "", "--restore-sibling only makes sense with --restore-detached")
    pid = spice_restore(info.images_dir, "--restore-sibling")
    try:
        with open(f"/proc/{pid}/stat") as f:
            assert int(f.read().rsplit(")", 1)[1].split()[1]) == os.getpid()
        assert_continues(info, pid)
    finally:
        kill_restored(info, pid)


def test_unsupported_object_is_named_before_any_task_exists(compat_tmp: Path, criu_bin: Path) -> None:
    """A real criu dump of a process holding a packet socket with a memory-mapped receive ring
    (criu restores those, spice does not): one error line naming the task, the mapping and why,
    exit 1, and no task created."""
    run = compat_tmp / "unsupported-ring"
    run.mkdir(parents=True)
    harness.make_subreaper()
    code = ("import mmap, socket, struct, time\n"
            "s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))\n"
            "s.setsockopt(263, 5, struct.pack('IIII', 4096, 4, 4096, 4))  # PACKET_RX_RING\n"
            "ring = mmap.mmap(s.fileno(), 4 * 4096)\n"
            "open('ready', 'w').close()\n"
            "time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=run, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + harness.scaled(10)
        while not (run / "ready").exists():
            assert time.monotonic() < deadline and proc.poll() is None, "the process did not map its ring"
            time.sleep(0.01)
        harness.criu_dump(proc.pid, run / "images")
    finally:
        harness.kill_pids([proc.pid])
    line = assert_one_error(spice("restore", "-D", str(run / "images"), "-d", "-o", "restore.log", check=False),
                            "restore")
    assert re.fullmatch(rf"Error \(spice/restore\): task {proc.pid}: VMA 0x[0-9a-f]+-0x[0-9a-f]+ is a packet "
                        r"socket ring mapping: not supported", line), line
    assert harness.process_state(proc.pid) is None
