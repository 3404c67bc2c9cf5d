# SPDX-License-Identifier: MIT
"""Inet sockets sock_diag does not list (never bound or connected; a TCP socket only bound), both
directions: real `criu dump` -> `spice restore`, `spice dump` -> real `criu restore` / `spice
restore`, and `spice dump` writing them as criu does (crit equal). After a restore the sockets keep
their options and bound port, and the unbound TCP socket can still connect and send."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from pathlib import Path

import fdkinds
import harness
import pytest
from harness import assert_continues, criu_restore, kill_restored
from spice import spice, spice_restore


def spice_dumper(pid: int, images: Path, leave_running: bool) -> subprocess.CompletedProcess[str]:
    images.mkdir(parents=True, exist_ok=True)
    return spice("dump", "-t", str(pid), "-D", str(images), "-v4", "-o", "dump.log",
                 *(["--leave-running"] if leave_running else []))


def check_restored(info: harness.DumpInfo, pid: int) -> None:
    """Continues with the same sockets (nodelay, bport and types are constants of its lines); the
    never-connected TCP socket connects to a listener of the test and sends the token."""
    assert pid == info.pid
    assert_continues(info, pid, new_ticks=3)
    fields = info.pre_dump["main"].fields
    assert fields["nodelay"] == "1" and fields["types"] == (
        "AF_INET/SOCK_STREAM,AF_INET6/SOCK_STREAM,AF_INET/SOCK_DGRAM,AF_INET/SOCK_STREAM"), fields
    with socket.socket() as lst:
        lst.bind(("127.0.0.1", 0))
        lst.listen(1)
        lst.settimeout(harness.scaled(10))
        (info.rundir / "connect-to").write_text(str(lst.getsockname()[1]))
        os.kill(pid, signal.SIGUSR1)
        conn, _ = lst.accept()
        with conn:
            conn.settimeout(harness.scaled(10))
            assert conn.makefile().readline().strip() == fields["token"]


@pytest.fixture(scope="module")
def criu_dump(criu_bin: Path, compat_tmp: Path) -> harness.DumpInfo:
    wl = harness.start_workload("inetidle", compat_tmp / "inet-idle" / "criu")
    return harness.dump_workload(wl, wl.rundir / "images")


@pytest.fixture(scope="module")
def spice_dump(criu_bin: Path, compat_tmp: Path) -> harness.DumpInfo:
    wl = harness.start_workload("inetidle", compat_tmp / "inet-idle" / "spice")
    return harness.dump_workload(wl, wl.rundir / "images", dumper=spice_dumper)


def test_criu_dump_restores_under_spice(criu_dump: harness.DumpInfo) -> None:
    for _ in range(2):
        pid = spice_restore(criu_dump.images_dir)
        check_restored(criu_dump, pid)
        kill_restored(criu_dump, pid)


def inet_entries(crit: Path, images: Path) -> list[dict]:
    out = subprocess.run([str(crit), "show", str(images / "files.img")], capture_output=True, text=True,
                         check=True)
    entries = [e["isk"] for e in json.loads(out.stdout)["entries"] if e["type"] == "INETSK"]
    for e in entries:
        del e["id"]  # file ids are numbered by each tool's walk
    return sorted(entries, key=lambda e: e["ino"])


def test_spice_dump_writes_them_as_criu(crit_bin: Path, compat_tmp: Path) -> None:
    wl = harness.start_workload("inetidle", compat_tmp / "inet-idle" / "both")
    try:
        theirs, ours = wl.rundir / "criu-images", wl.rundir / "spice-images"
        harness.criu_dump(wl.pid, theirs, leave_running=True)
        spice_dumper(wl.pid, ours, leave_running=True)
        a, b = inet_entries(crit_bin, theirs), inet_entries(crit_bin, ours)
        assert a == b
        assert sorted(e["src_port"] for e in a)[-1] == fdkinds.last_field(wl, "bport")
        assert {e["state"] for e in a} == {"CLOSE"}
        assert_continues(wl, wl.pids, new_ticks=2)
    finally:
        wl.kill()


@pytest.mark.parametrize("tool", ["criu", "spice"])
def test_spice_dump_restores(spice_dump: harness.DumpInfo, tool: str) -> None:
    info = spice_dump
    pid = criu_restore(info.images_dir) if tool == "criu" else spice_restore(info.images_dir)
    check_restored(info, pid)
    kill_restored(info, pid)
