# SPDX-License-Identifier: MIT
"""Everyday programs, restored by spice and provably going on:

* GNU `tail -f FILE`: lines appended after the restore come out of it;
* util-linux `script -c 'shell loop' TYPESCRIPT`: `script` holds a pty master and copies what the
  shell loop (a session on the slave, its controlling terminal) prints into the typescript, which
  goes on growing with the next numbers after the restore;
* a tmux server with a shell loop in its pane: clients reach it after the restore, and the pane
  counts on.

The first two block in poll() when dumped, and die after a restore by real criu (checked here
for tail): a call interrupted with a timeout (poll, nanosleep, futex waits, clock_nanosleep) is
dumped as returning EINTR, since the time it had left cannot be restored, and these two take EINTR
from poll() for a fatal error. spice re-executes such a call instead (restore/threads.py), so the
same real criu images restore into running programs.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import fdkinds
import harness
import pytest
from spice import spice_dumper, spice_restore

POLL = 7


def _start(argv: list[str], run: Path, out: Path) -> subprocess.Popen:
    harness.make_subreaper()
    with open(out, "ab") as f:  # O_APPEND: criu and spice check the size of other files on restore
        proc = subprocess.Popen(argv, cwd=run, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
    return proc


def _in_poll(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/syscall").read_text().split()[0] == str(POLL)
    except (OSError, IndexError):
        return False


def _dump(tool: str, pid: int, images: Path) -> None:
    fdkinds.wait_for(lambda: _in_poll(pid), 10, f"{pid} to block in poll()")
    tree = [pid, *harness.descendants(pid)]
    if tool == "criu":
        harness.criu_dump(pid, images)
    else:
        spice_dumper(pid, images, leave_running=False)
    harness.reap(tree)  # the dump killed them: their pids must be free for the restore


@pytest.fixture(scope="module")
def coreutils_tail() -> str:
    tail = shutil.which("tail")
    assert tail, "GNU tail is needed"
    assert "GNU coreutils" in subprocess.run([tail, "--version"], capture_output=True, text=True).stdout
    return tail


@contextlib.contextmanager
def _dumped_tail(tail: str, run: Path, dumper: str) -> Iterator[tuple[Path, Path, int]]:
    """`tail -f watched.txt` (output to tail.out) run in `run` and dumped by `dumper`, which kills
    it: (the followed file, tail's output, its pid)."""
    run.mkdir(parents=True)
    watched, out = run / "watched.txt", run / "tail.out"
    watched.write_text("before\n")
    proc = _start([tail, "-f", str(watched)], run, out)
    try:
        fdkinds.wait_for(lambda: out.read_text() == "before\n", 10, "tail to print the file")
        _dump(dumper, proc.pid, run / "images")
        yield watched, out, proc.pid
    finally:
        harness.kill_pids([proc.pid])


@pytest.mark.parametrize("dumper", ["criu", "spice"])
def test_tail_f_follows_after_restore(coreutils_tail: str, compat_tmp: Path, dumper: str) -> None:
    run = compat_tmp / "real" / f"tail-{dumper}"
    with _dumped_tail(coreutils_tail, run, dumper) as (watched, out, dumped):
        pid = spice_restore(run / "images")  # once: the followed file grows (a restore checks its size)
        assert pid == dumped
        for n in range(3):
            line = f"after restore {n} {time.monotonic_ns()}\n"
            with open(watched, "a") as f:
                f.write(line)
            fdkinds.wait_for(lambda line=line: out.read_text().endswith(line), 10,
                             f"tail -f to print what was appended (it printed {out.read_text()!r})")
        assert "Interrupted system call" not in out.read_text()


def test_tail_f_dies_after_a_criu_restore(coreutils_tail: str, compat_tmp: Path) -> None:
    """Why the test above matters: the same dump, restored by criu, ends tail -f on EINTR."""
    run = compat_tmp / "real" / "tail-criu-only"
    with _dumped_tail(coreutils_tail, run, "criu") as (_, out, _):
        pid = harness.criu_restore(run / "images")
        fdkinds.wait_for(lambda: "Interrupted system call" in out.read_text(), 10, "tail to fail on EINTR")
        harness.reap([pid])


def _ticks(typescript: Path) -> list[int]:
    return [int(n) for n in re.findall(rb"tick (\d+)\r\n", typescript.read_bytes())]


@pytest.mark.parametrize("dumper", ["criu", "spice"])
def test_script_records_on_after_restore(compat_tmp: Path, dumper: str) -> None:
    script = shutil.which("script")
    assert script, "util-linux script is needed"
    run = compat_tmp / "real" / f"script-{dumper}"
    run.mkdir(parents=True)
    typescript = run / "typescript"
    loop = "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.1; done"
    proc = _start([script, "-q", "-f", "-c", loop, str(typescript)], run, run / "script.out")
    try:
        fdkinds.wait_for(lambda: typescript.exists() and len(_ticks(typescript)) >= 3, 10, "script to record")
        _dump(dumper, proc.pid, run / "images")
        before = _ticks(typescript)
        pid = spice_restore(run / "images")
        try:
            assert pid == proc.pid
            fdkinds.wait_for(lambda: len(_ticks(typescript)) >= len(before) + 5, 10,
                             f"the typescript to grow (it ends {typescript.read_bytes()[-200:]!r})")
            ticks = _ticks(typescript)
            assert ticks == list(range(1, len(ticks) + 1)), ticks  # the same loop, numbers in sequence
            assert b"Script done" not in typescript.read_bytes()
        finally:
            harness.kill_pids([pid, *harness.descendants(pid)])
    finally:
        harness.kill_pids([proc.pid])


def _pane_ticks(tmux: list[str]) -> list[int]:
    out = subprocess.run([*tmux, "capture-pane", "-p", "-S", "-200"], capture_output=True, text=True, timeout=10)
    return [int(n) for n in re.findall(r"^tick (\d+)$", out.stdout, re.M)]


@pytest.mark.parametrize("dumper", ["criu", "spice"])
def test_tmux_server_serves_its_pane_after_restore(compat_tmp: Path, dumper: str) -> None:
    """A tmux server (a daemon holding a pty master per pane and its listening socket) with a
    shell loop in its pane: after the restore, tmux clients reach it and the pane shows the loop
    counting on."""
    binary = shutil.which("tmux")
    assert binary, "tmux is needed (make compat-setup installs it)"
    run = compat_tmp / "real" / f"tmux-{dumper}"
    run.mkdir(parents=True)
    tmux = [binary, "-S", str(run / "sock"), "-f", "/dev/null"]
    env = {"PATH": "/usr/bin:/bin", "TERM": "screen", "HOME": str(run)}
    loop = "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.1; done"
    harness.make_subreaper()
    subprocess.run([*tmux, "new-session", "-d", "-x", "80", "-y", "40", loop], cwd=run, env=env, check=True,
                   stdin=subprocess.DEVNULL, capture_output=True, timeout=10)
    server = int(subprocess.run([*tmux, "display", "-p", "#{pid}"], capture_output=True, text=True, check=True,
                                timeout=10).stdout)
    try:
        fdkinds.wait_for(lambda: len(_pane_ticks(tmux)) >= 3, 10, "the pane to count")
        _dump(dumper, server, run / "images")
        pid = spice_restore(run / "images")
        try:
            assert pid == server
            first = max(_pane_ticks(tmux))
            fdkinds.wait_for(lambda: max(_pane_ticks(tmux)) >= first + 5, 10, "the pane to count on")
            ticks = _pane_ticks(tmux)
            assert ticks == list(range(ticks[0], ticks[0] + len(ticks))), ticks
        finally:
            subprocess.run([*tmux, "kill-server"], capture_output=True, timeout=10)
            harness.kill_pids([pid, *harness.descendants(pid)])
    finally:
        harness.kill_pids([server])
