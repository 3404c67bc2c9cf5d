# SPDX-License-Identifier: MIT
"""Half-closed TCP connections under --tcp-established, both ways against real CRIU 4.2.1.

The workload (fdkinds/tcphalf.py) holds both ends of four loopback connections, dumped while
A's server is in CLOSE_WAIT (the client's FIN queued behind unread messages) and its client in
FIN_WAIT2, B's server in LAST_ACK (answer and FIN unsent behind a closed window) and its client
in FIN_WAIT2, C's server in FIN_WAIT1 (data and FIN waiting) and its client ESTABLISHED, D's
server in CLOSING (the client's message and FIN unread, its own data and FIN waiting) and its
client in FIN_WAIT2. After a restore, by either tool from either tool's images, every connection
must finish as if nothing happened: A's server reads the remaining messages and then end of file,
answers and shuts down; every client reads the whole answer, byte-checked, then end of file; C's
server reads end of file after the client's last message, D's server the message then end of
file. spice's images of those sockets decode with real crit as CRIU's do. A connection still
connecting (SYN_SENT), which criu dumps, is refused by name both ways. The dump-and-restore
tests run over 127.0.0.1, ::1 and ::ffff:127.0.0.1 (the forged FIN as IPv4, IPv6, IPv4 again).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import fdkinds
import harness
import pytest
from harness import DumpInfo, assert_continues, criu_dump, criu_restore, kill_restored
from spice import assert_one_error, spice, spice_restore

from spice_criu.netfilter import NFPROTO_INET, nft_delete_table, nft_lock_table, nft_tables

TCP_ARGS = ("--tcp-established", "--network-lock", "nftables")
PROGRESS = ("ra", "ea", "ca", "xa", "cb", "xb", "cc", "xc", "rc", "ec", "cd", "xd", "rd", "ed")
#: the workload over 127.0.0.1, over ::1, and on IPv6 sockets over ::ffff:127.0.0.1
NAMES = ("tcphalf", "tcphalf6", "tcphalf4in6")
for _name in NAMES:
    harness.SPECS.setdefault(_name, harness.WorkloadSpec(
        _name, str(Path(fdkinds.__file__).parent / f"{_name}.py"), steps=("seq",), monotonic=PROGRESS))

#: TCP_INFO states of the servers and clients of A, B, C, D while dumped
DUMPED_STATES = "8.5.9.5.4.1.11.5"
#: as crit shows them (its enum has no CLOSING: the number)
CRIT_STATES = ["11", "CLOSE_WAIT", "ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2", "FIN_WAIT2", "FIN_WAIT2", "LAST_ACK",
               "LISTEN"]
#: the end of every exchange: all messages and answer bytes read, every end of file seen
DONE = {"ra": "40", "ea": "1", "ca": str(40 * 1024), "xa": "1", "cb": str(48 * 1024), "xb": "1",
        "cc": str(48 * 1024), "xc": "1", "ec": "1", "cd": str(48 * 1024), "xd": "1", "rd": "1", "ed": "1"}


def _crit(crit: Path, image: Path) -> dict:
    out = subprocess.run([str(crit), "show", str(image)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def _inet(crit: Path, images: Path) -> list[dict]:
    return sorted(({k: v for k, v in e["isk"].items() if k != "id"}
                   for e in _crit(crit, images / "files.img")["entries"] if e["type"] == "INETSK"),
                  key=lambda e: e["ino"])


def _drop_lock(crit: Path, images: Path) -> None:
    inv = _crit(crit, images / "inventory.img")["entries"][0]
    table = nft_lock_table(inv["dump_criu_run_id"])
    if table in nft_tables():
        nft_delete_table(NFPROTO_INET, table)


def _half_closed(wl: harness.Workload) -> None:
    """Wait for the dump point: every connection in its half-closed state, with data queued."""
    wl.wait_ticks(8)
    st = fdkinds.last_field_text(wl, "st")
    assert st == DUMPED_STATES, st


def spice_tcp_dumper(pid: int, images: Path, leave_running: bool) -> subprocess.CompletedProcess[str]:
    images.mkdir(parents=True, exist_ok=True)
    return spice("dump", "-t", str(pid), "-D", str(images), "-v4", "-o", "dump.log", *TCP_ARGS,
                 *(["--leave-running"] if leave_running else []), log=images / "dump.log")


def _check_finishes(info: DumpInfo, pid: int) -> None:
    """The restored process goes on from the dump point in the same states and finishes every
    exchange (each byte is checked by the workload itself, which FAILs on anything wrong)."""
    assert pid == info.pid
    assert_continues(info, pid, new_ticks=3)
    lines, _ = harness.read_lines(info.out_file, info.resume_offset)
    assert info.pre_dump["main"].fields["st"] == DUMPED_STATES
    assert lines[0].fields["st"] == DUMPED_STATES, lines[0].text  # nothing moved, nothing reset

    def done() -> bool:
        last = harness.read_lines(info.out_file, info.resume_offset)[0][-1]
        if last.failed:
            raise AssertionError(last.text)
        return all(last.fields.get(k) == v for k, v in DONE.items())

    fdkinds.wait_for(done, 30, "every half-closed exchange to finish")
    cont = assert_continues(info, pid, new_ticks=2)
    assert cont.first_tick["main"] == info.last_tick + 1


def _restore(info: DumpInfo, tool: str) -> int:
    if tool == "criu":
        return criu_restore(info.images_dir, extra_args=("--tcp-established",))
    return spice_restore(info.images_dir, "--tcp-established")


def _dump_and_restore(compat_tmp: Path, crit: Path, name: str, dumper: str, restorer: str) -> None:
    wl = harness.start_workload(name, compat_tmp / "tcp-half" / f"{name}-{dumper}-{restorer}")
    _half_closed(wl)
    images = wl.rundir / "images"
    if dumper == "criu":
        info = harness.dump_workload(wl, images, extra_args=TCP_ARGS)
    else:
        info = harness.dump_workload(wl, images, dumper=spice_tcp_dumper)
    try:
        assert sorted(str(e["state"]) for e in _inet(crit, images)) == CRIT_STATES
        assert len(list(images.glob("tcp-stream-*.img"))) == 8
        pid = _restore(info, restorer)
        try:
            _check_finishes(info, pid)
        finally:
            kill_restored(info, pid)
    finally:
        _drop_lock(crit, images)


@pytest.mark.parametrize("name", NAMES)
def test_criu_dump_of_half_closed_connections_restores_under_spice(name: str, criu_bin: Path, crit_bin: Path,
                                                                   compat_tmp: Path) -> None:
    _dump_and_restore(compat_tmp, crit_bin, name, "criu", "spice")


@pytest.mark.parametrize("name", NAMES)
def test_spice_dump_of_half_closed_connections_restores_under_criu(name: str, criu_bin: Path, crit_bin: Path,
                                                                   compat_tmp: Path) -> None:
    _dump_and_restore(compat_tmp, crit_bin, name, "spice", "criu")


@pytest.mark.parametrize("name", NAMES)
def test_spice_dump_of_half_closed_connections_restores_under_spice(name: str, criu_bin: Path, crit_bin: Path,
                                                                    compat_tmp: Path) -> None:
    _dump_and_restore(compat_tmp, crit_bin, name, "spice", "spice")


def test_images_of_half_closed_connections_equal_criu_s(criu_bin: Path, crit_bin: Path, compat_tmp: Path) -> None:
    """The process SIGSTOPped in its half-closed states, then CRIU's and spice's -R dumps: the
    inetsk entries are equal (states, shutdown, options...), and so are the tcp-stream images,
    queue bytes and FIN-adjusted lengths and sequences included, except the TCP timestamp clock and
    snd_wl1, which CRIU's window probe (when its dump leaves repair mode) moves. The process,
    continued, finishes every exchange."""
    wl = harness.start_workload("tcphalf", compat_tmp / "tcp-half" / "stopped")
    dirs = {"criu": wl.rundir / "criu", "spice": wl.rundir / "spice"}
    try:
        _half_closed(wl)
        os.kill(wl.pid, signal.SIGSTOP)
        time.sleep(0.5)  # in-flight segments land
        criu_dump(wl.pid, dirs["criu"], leave_running=True, extra_args=TCP_ARGS)
        time.sleep(0.5)
        spice_tcp_dumper(wl.pid, dirs["spice"], leave_running=True)
        assert harness.process_state(wl.pid) == "T", "a stopped tree stays stopped"
        isk = {k: _inet(crit_bin, d) for k, d in dirs.items()}
        assert isk["spice"] == isk["criu"]
        assert sorted(str(e["state"]) for e in isk["spice"]) == CRIT_STATES
        fdkinds.crit_files(crit_bin, dirs["spice"], "INETSK", "isk")  # spice's crit shows files.img as crit does
        names = sorted(p.name for p in dirs["spice"].glob("tcp-stream-*.img"))
        assert names == sorted(p.name for p in dirs["criu"].glob("tcp-stream-*.img")) and len(names) == 8
        for name in names:
            c, s = (_crit(crit_bin, d / name)["entries"][0] for d in dirs.values())
            diff = {k for k in c.keys() | s.keys() if c.get(k) != s.get(k)}
            assert diff <= {"timestamp", "snd_wl1"}, f"{name}: {[(k, c.get(k), s.get(k)) for k in sorted(diff)]}"
            assert json.loads(spice("crit", "show", str(dirs["spice"] / name)).stdout) == \
                _crit(crit_bin, dirs["spice"] / name)
        by_state = {e["state"]: _crit(crit_bin, dirs["spice"] / f"tcp-stream-{e['ino']:x}.img")["entries"][0]
                    for e in isk["spice"] if e["state"] in ("LAST_ACK", "FIN_WAIT1", "CLOSE_WAIT", 11)}
        for st in ("LAST_ACK", "FIN_WAIT1", 11):  # answers waiting for the window, the FIN not counted
            t = by_state[st]
            assert 0 < t["unsq_len"] <= t["outq_len"] and len(_b64(t["extra"]["outq"])) == t["outq_len"], (st, t)
        assert by_state["CLOSE_WAIT"]["inq_len"] % 16 == 0 and by_state["CLOSE_WAIT"]["inq_len"] > 0
        assert by_state[11]["inq_len"] == 16  # the client's message, its FIN not counted
        os.kill(wl.pid, signal.SIGCONT)
        fdkinds.wait_for(lambda: all(fdkinds.last_field_text(wl, k) == v for k, v in DONE.items()), 30,
                         "the exchanges to finish after the two dumps")
        assert_continues(wl)
    finally:
        os.kill(wl.pid, signal.SIGCONT)
        wl.kill()


def _b64(text: str) -> bytes:
    import base64

    return base64.b64decode(text)


CONNECTING = """
import socket, sys, time
s = socket.socket()
s.setblocking(False)
s.connect_ex(("127.0.0.1", int(sys.argv[1])))  # the SYN is dropped: SYN_SENT, retrying
open("ready", "w").write(str(s.getsockname()[1]))
while True:
    time.sleep(0.05)
"""


def test_a_connection_still_connecting_is_refused_by_name(criu_bin: Path, crit_bin: Path, compat_tmp: Path) -> None:
    """SYN_SENT (criu dumps it and replays the connect; spice does not): spice's dump refuses it,
    and spice's restore of criu's dump too, each in one line naming the socket, the process left
    running / no task created."""
    rundir = compat_tmp / "tcp-half" / "connecting"
    rundir.mkdir(parents=True)
    (rundir / "connecting.py").write_text(CONNECTING)
    # a listener whose accept queue is full (backlog 0, one connection not accepted): SYNs are dropped
    with socket.socket() as lsn, socket.socket() as first:
        lsn.bind(("127.0.0.1", 0))
        lsn.listen(0)
        first.connect(lsn.getsockname())
        proc = subprocess.Popen([sys.executable, "connecting.py", str(lsn.getsockname()[1])], cwd=rundir,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            fdkinds.wait_for(lambda: (rundir / "ready").exists() and (rundir / "ready").read_text(), 10, "ready")
            port = (rundir / "ready").read_text()
            images = rundir / "spice-images"
            images.mkdir()
            err = assert_one_error(spice("dump", "-t", str(proc.pid), "-D", str(images), "-o", "dump.log", *TCP_ARGS,
                                         check=False), "dump")
            assert f"127.0.0.1:{port} -> 127.0.0.1:{lsn.getsockname()[1]}" in err, err
            assert err.endswith("TCP socket in state SYN_SENT: only established or half-closed connections "
                                "(and listening or closed sockets) can be dumped"), err
            assert harness.process_state(proc.pid) in ("S", "R")
            with open(f"/proc/{proc.pid}/status") as f:
                assert "TracerPid:\t0\n" in f.read()
            theirs = rundir / "criu-images"
            criu_dump(proc.pid, theirs, extra_args=TCP_ARGS)
            proc.wait(timeout=10)
            try:
                assert [e["state"] for e in _inet(crit_bin, theirs)] == ["SYN_SENT"]
                err = assert_one_error(spice("restore", "-D", str(theirs), "-d", "-o", "restore.log",
                                             "--tcp-established", check=False), "restore")
                assert f"127.0.0.1:{port} -> 127.0.0.1:{lsn.getsockname()[1]}" in err, err
                assert "state SYN_SENT (only established and half-closed connections are restored)" in err, err
                assert not harness.is_running(proc.pid), "a refused restore created the task"
            finally:
                _drop_lock(crit_bin, theirs)
        finally:
            proc.kill()
            proc.wait()
