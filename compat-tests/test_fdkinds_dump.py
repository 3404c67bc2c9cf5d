# SPDX-License-Identifier: MIT
"""The remaining fd kinds, `spice dump` -> real `criu restore` and -> `spice restore`: eventfd, epoll,
timerfd, signalfd, unix socket pairs; and what spice dump refuses (leaving the tree running): a TCP
connection without --tcp-established (with it: test_tcp_dump.py)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import fdkinds
import harness
import pytest
from harness import assert_continues, criu_restore, kill_restored
from spice import spice, spice_dumper, spice_restore


@pytest.fixture(scope="module")
def evfds_spice_dump(criu_bin: Path, compat_tmp: Path) -> harness.DumpInfo:
    wl = harness.start_workload("evfds", compat_tmp / "fdkinds-dump" / "evfds")
    return harness.dump_workload(wl, wl.rundir / "images", dumper=spice_dumper)


def _files(crit: Path, images: Path) -> list[dict]:
    out = subprocess.run([str(crit), "show", str(images / "files.img")], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)["entries"]


def test_spice_dump_of_event_fds_decodes_with_crit(evfds_spice_dump: harness.DumpInfo, crit_bin: Path) -> None:
    by_type = {e["type"]: e for e in _files(crit_bin, evfds_spice_dump.images_dir)}
    assert by_type["SIGNALFD"]["sgfd"]["sigmask"] == "0x200"  # SIGUSR1
    t = by_type["TIMERFD"]["tfd"]
    assert (t["clockid"], t["isec"], t["insec"]) == (1, 0, 100_000_000) and 0 < t["vnsec"] <= 100_000_000
    ep = by_type["EVENTPOLL"]["epfd"]["tfd"]
    assert sorted(x["data"] >> 48 for x in ep) == [0x1111, 0x2222, 0x3333, 0x4444, 0x5555]
    assert {x["events"] for x in ep} == {0x19, 0x80000019}  # EPOLLIN|ERR|HUP, + EPOLLET on the socket
    assert 1 <= by_type["EVENTFD"]["efd"]["counter"] <= 16


@pytest.mark.parametrize("tool", ["criu", "spice"])
def test_spice_dump_of_event_fds_restores(evfds_spice_dump: harness.DumpInfo, tool: str) -> None:
    info = evfds_spice_dump
    pid = criu_restore(info.images_dir) if tool == "criu" else spice_restore(info.images_dir)
    assert pid == info.pid
    cont = assert_continues(info, pid, new_ticks=4)
    assert cont.first_tick["main"] == info.last_tick + 1
    before = fdkinds.last_field(info, "sigs")
    assert fdkinds.signal_and_wait(pid, info.out_file) == before + 1
    kill_restored(info, pid)


def test_spice_dump_refuses_established_tcp_without_the_flag_and_leaves_it_running(criu_bin: Path,
                                                                                   compat_tmp: Path) -> None:
    """As criu: a connected TCP socket needs --tcp-established (test_tcp_dump.py dumps it with it)."""
    wl = harness.start_workload("tcppair", compat_tmp / "fdkinds-dump" / "tcppair")
    images = wl.rundir / "images"
    images.mkdir()
    p = spice("dump", "-t", str(wl.pid), "-D", str(images), "-v4", "-o", "dump.log", check=False)
    assert p.returncode == 1
    assert "connected TCP socket, consider using --tcp-established option" in p.stderr, p.stderr
    assert re.search(r"fd \d+ is socket:\[\d+\] \(TCP 127\.0\.0\.1:\d+ -> 127\.0\.0\.1:\d+\)", p.stderr), p.stderr
    wl.wait_ticks(3)  # both processes carry on, the connection intact
    assert_continues(wl, wl.pids, new_ticks=2)
    wl.kill()


def test_spice_dump_of_a_shell_job_restores_on_the_terminal(criu_bin: Path, compat_tmp: Path) -> None:
    sh, info = fdkinds.shell_job_dump([sys.executable, "-m", "spice_criu"], compat_tmp / "fdkinds-dump" / "ttyjob")
    fdkinds.check_shell_job_restore(sh, info)


def test_spice_dump_of_a_shell_job_needs_shell_job(criu_bin: Path, compat_tmp: Path) -> None:
    base = compat_tmp / "fdkinds-dump" / "ttyjob-noflag"
    (base / "images").mkdir(parents=True)
    sh = fdkinds.JobShell(base)
    try:
        out = base / "ttyjob.out"
        pid = sh.spawn([sys.executable, "-B", fdkinds.HERE / "ttyjob.py", out], cwd=base)
        fdkinds.wait_for(lambda: len(harness.read_lines(out)[0]) >= 2, 15, "2 ticks")
        rc = sh.run([sys.executable, "-m", "spice_criu", "dump", "-t", pid, "-D", base / "images", "-v4", "-o",
                     "dump.log"], cwd=harness.REPO, bg=True)
        assert rc == 1
        assert "--shell-job" in (base / "images" / "dump.log").read_text()
        n = len(harness.read_lines(out)[0])
        fdkinds.wait_for(lambda: len(harness.read_lines(out)[0]) >= n + 2, 5, "the job to carry on")
        assert harness.is_running(pid)
        sh.kill_job(pid)
    finally:
        sh.close()
