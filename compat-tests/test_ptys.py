# SPDX-License-Identifier: MIT
"""pty pairs with both ends in the dump (tmux, `script`, sshd, expect, pty.fork()), both
directions: real `criu dump` -> `spice restore`, `spice dump` -> real `criu restore` / `spice
restore`, and `spice dump` writing them as criu does (crit equal). On the ptypair workload: after a
restore the pty has its index again, the child session has it as its controlling terminal and its
foreground group (and, restored by spice, so does the session's other member), with its termios
(ECHO off) and window size, and keeps answering the pings its parent writes to the master; the
data queued in the second pair is there again; the third is still in packet mode. A pty index
taken by someone else at restore is one error, no task left."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import struct
import subprocess
from pathlib import Path

import fdkinds
import harness
import pytest
from harness import assert_continues
from spice import assert_one_error, spice

TIOCGPTN = 0x80045430


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def check_restored(info: harness.DumpInfo, pid: int, tool: str = "spice") -> None:
    """The restored tree goes on as described above; restored by spice, the session's other member
    has the terminal as its controlling terminal again too (criu gives it to the leader alone)."""
    assert pid == info.pid
    pongs = int(info.pre_dump["main"].fields["pongs"])
    assert_continues(info, list(info.pids), new_ticks=3)
    main, child = info.pre_dump["main"].fields, info.pre_dump["child"].fields
    assert (child["ctty"], child["fg"], child["echo"], child["size"]) == ("1", "1", "0", "33x111"), child
    assert (main["qin"], main["qout"], main["pkt"]) == ("9", "10", "1"), main
    _wait_queued(info)
    fdkinds.wait_for(lambda: fdkinds.last_field(info, "pongs") > pongs + 2, 10, "pongs through the restored pty")
    kid = int(main["child"])
    index = int(main["pty"])
    tty_nr = (136 + index // 256) << 8 | index % 256  # new_encode_dev of /dev/pts/<index>
    st = _stat(kid)
    assert (int(st[4]), int(st[5])) == (tty_nr, kid), st  # tty_nr, tpgid: its ctty, its own group in front
    assert info.pre_dump["member"].fields["mctty"] == "1"
    if tool == "spice":
        member = info.pre_dump["member"].pid
        assert int(_stat(member)[4]) == tty_nr, _stat(member)
        assert fdkinds.last_field(info, "mctty", "member") == 1


def _wait_queued(target) -> None:
    """The second pair holds its queued data again (9 bytes at the slave, 10 at the master)."""
    fdkinds.wait_for(lambda: (fdkinds.last_field(target, "qin"), fdkinds.last_field(target, "qout")) == (9, 10), 10,
                     "the queued data back in the second pair")


criu_dump, spice_dump = fdkinds.dump_fixtures("ptypair")


def test_criu_dump_restores_under_spice(criu_dump: harness.DumpInfo) -> None:
    fdkinds.restore_and_check(criu_dump, "spice", check_restored, times=2)


def _crit(crit: Path, images: Path, name: str) -> list[dict]:
    out = subprocess.run([str(crit), "show", str(images / name)], capture_output=True, text=True, check=True)
    assert json.loads(spice("crit", "show", str(images / name)).stdout) == json.loads(out.stdout)
    return json.loads(out.stdout)["entries"]


def _infos(crit: Path, images: Path) -> list[dict]:
    """tty-info entries by id; of the c_cc words only the first 8: criu memcpy()s 32 bytes of a
    glibc termios into its 19-word array, the rest is whatever its heap held."""
    infos = _crit(crit, images, "tty-info.img")
    for e in infos:
        for k in ("termios", "termios_locked"):
            e[k]["c_cc"] = e[k]["c_cc"][:8]
    return sorted(infos, key=lambda e: e["id"])


def _tty_files(crit: Path, images: Path) -> list[dict]:
    """TTY entries and the paths of their REG entries, without file ids (each tool numbers them)."""
    entries = _crit(crit, images, "files.img")
    regs = {e["id"]: e["reg"] for e in entries if e["type"] == "REG"}
    out = []
    for e in entries:
        if e["type"] == "TTY":
            t = dict(e["tty"])
            reg = regs[t.pop("regf_id")]
            del t["id"]
            out.append({**t, "path": reg["name"], "reg_flags": reg["flags"], "mode": reg["mode"]})
    return sorted(out, key=lambda t: (t["tty_info_id"], t["path"], t["flags"]))


def test_spice_dump_writes_ptys_as_criu(crit_bin: Path, compat_tmp: Path) -> None:
    with fdkinds.dumped_by_both("ptypair", compat_tmp / "ptypair" / "both") as (wl, theirs, ours):
        infos = _infos(crit_bin, theirs)
        assert _infos(crit_bin, ours) == infos
        kid, index = fdkinds.last_field(wl, "child"), fdkinds.last_field(wl, "pty")
        master = next(i for i in infos if i["id"] == index * 2 + 1)
        assert (master["sid"], master["pgrp"], master["winsize"]["ws_row"]) == (kid, kid, 33)
        assert sum(i["packet_mode"] for i in infos) == 1
        assert _tty_files(crit_bin, ours) == _tty_files(crit_bin, theirs)
        # what waits in the idle pair (the main pair may hold a pong in flight: time-dependent)
        queued = [sorted((d["tty_id"], d["data"]) for d in _crit(crit_bin, images, "tty-data.img")
                         if d["tty_id"] >> 1 != index) for images in (theirs, ours)]
        assert queued[0] == queued[1] and len(queued[0]) == 2, queued
        _wait_queued(wl)  # both dumps gave it back


@pytest.mark.parametrize("tool", ["criu", "spice"])
def test_spice_dump_restores(spice_dump: harness.DumpInfo, tool: str) -> None:
    fdkinds.restore_and_check(spice_dump, tool, lambda info, pid: check_restored(info, pid, tool))


def test_pty_index_taken_is_one_error_and_no_task_left(criu_dump: harness.DumpInfo) -> None:
    """Someone else holds /dev/pts/<index> when the restore wants it back: exit 1, one line naming
    the pty, every task made so far killed."""
    index = int(criu_dump.pre_dump["main"].fields["pty"])
    held: list[int] = []
    try:
        while True:  # the kernel hands out the lowest free index: take them up to ours
            fd = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
            held.append(fd)
            got = struct.unpack("I", fcntl.ioctl(fd, TIOCGPTN, bytes(4)))[0]
            if got >= index:
                assert got == index, f"pty {index} is taken by someone else already"
                break
        p = spice("restore", "-D", str(criu_dump.images_dir), "-d", "-o", "restore-taken.log", check=False)
        assert_one_error(p, "tty", f"can't get pty index {index} back (/dev/pts/{index} is taken)")
        for pid in criu_dump.pids:
            assert harness.process_state(pid) is None, pid
    finally:
        for fd in held:
            with contextlib.suppress(OSError):
                os.close(fd)
    fdkinds.restore_and_check(criu_dump, "spice", check_restored)  # and with the index free again, it works


# ------------------------------------------------------------------------ a hung-up slave (ptyhung)

hung_criu_dump, hung_spice_dump = fdkinds.dump_fixtures("ptyhung")


def check_hung(info: harness.DumpInfo, pid: int) -> None:
    """The restored process goes on with its slave hung up again, under the same /dev/pts name."""
    assert pid == info.pid
    assert_continues(info, pid, new_ticks=3)
    assert info.pre_dump["main"].fields["hung"] == "1"


def test_hung_up_slave_of_a_criu_dump_restores_under_spice(hung_criu_dump: harness.DumpInfo) -> None:
    fdkinds.restore_and_check(hung_criu_dump, "spice", check_hung, times=2)


@pytest.mark.parametrize("tool", ["criu", "spice"])
def test_hung_up_slave_of_a_spice_dump_restores(hung_spice_dump: harness.DumpInfo, tool: str) -> None:
    fdkinds.restore_and_check(hung_spice_dump, tool, check_hung)


def test_spice_dump_writes_a_hung_up_slave_as_criu(crit_bin: Path, compat_tmp: Path) -> None:
    """What is left of it: no settings, no session, and its REG entry names the gone devpts node
    (no ghost file: the node is made again with its pty)."""
    with fdkinds.dumped_by_both("ptyhung", compat_tmp / "ptyhung" / "both") as (_, theirs, ours):
        infos = _crit(crit_bin, theirs, "tty-info.img")
        assert _crit(crit_bin, ours, "tty-info.img") == infos
        assert len(infos) == 1 and "termios" not in infos[0], infos
        assert _tty_files(crit_bin, ours) == _tty_files(crit_bin, theirs)
        assert not (ours / "remap-fpath.img").exists() and not (theirs / "remap-fpath.img").exists()
