# SPDX-License-Identifier: MIT
"""The remaining fd kinds, real `criu dump` -> `spice restore`: eventfd, epoll (over a pipe, an
eventfd, a timerfd, a signalfd and a socket), timerfd, signalfd; an established loopback TCP
connection between two processes (--tcp-established --network-lock nftables on both tools); a shell
job on a pty (--shell-job); a pipe to a reader outside the dump (--inherit-fd)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import fdkinds
import harness
import pytest
from harness import assert_continues, kill_restored, process_state
from spice import REPO, spice, spice_restore

from spice_criu.linux.pidfd import getfd
from spice_criu.netfilter import nft_lock_table, nft_tables

TCP_ARGS = ("--tcp-established", "--network-lock", "nftables")


def _crit(crit: Path, image: Path) -> dict:
    import json

    return json.loads(subprocess.run([str(crit), "show", str(image)], capture_output=True, text=True,
                                     check=True).stdout)


@pytest.fixture(scope="module")
def evfds_dump(criu_bin: Path, compat_tmp: Path) -> harness.DumpInfo:
    wl = harness.start_workload("evfds", compat_tmp / "fdkinds" / "evfds")
    return harness.dump_workload(wl, wl.rundir / "images")


def test_event_fds_restore_and_keep_working(evfds_dump: harness.DumpInfo, crit_bin: Path) -> None:
    info = evfds_dump
    kinds = {e["type"] for e in _crit(crit_bin, info.images_dir / "files.img")["entries"]}
    assert {"EVENTFD", "EVENTPOLL", "TIMERFD", "SIGNALFD", "PIPE", "UNIXSK"} <= kinds
    for _ in range(2):  # the same images twice: nothing is consumed by a restore
        pid = spice_restore(info.images_dir)
        assert pid == info.pid
        cont = assert_continues(info, pid, new_ticks=4)
        assert cont.first_tick["main"] == info.last_tick + 1
        # the workload checked on every tick: epoll reports pipe/eventfd/socket under their data words,
        # the fdinfo target list (eps) and the timer interval (tint) are the dumped ones, the eventfd
        # counter follows on; a signal sent now must come out of the restored signalfd
        before = fdkinds.last_field(info, "sigs")
        assert fdkinds.signal_and_wait(pid, info.out_file) == before + 1
        assert fdkinds.signal_and_wait(pid, info.out_file) == before + 2
        fdinfo = Path(f"/proc/{pid}/fdinfo")
        texts = [p.read_text() for p in fdinfo.iterdir()]
        assert sum("tfd:" in t for t in texts) == 1
        assert any("it_interval: (0, 100000000)" in t for t in texts)
        kill_restored(info, pid)
        assert process_state(pid) is None


def _tcp_nodelay_sockets(pids: list[int]) -> int:
    """How many TCP sockets of these processes have TCP_NODELAY set (read through pidfd_getfd)."""
    n = 0
    for pid in pids:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            if not os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                continue
            s = socket.socket(fileno=getfd(pid, int(fd)))
            try:
                if s.type == socket.SOCK_STREAM and s.family in (socket.AF_INET, socket.AF_INET6):
                    n += bool(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            finally:
                s.close()
    return n


def test_tcp_connection_between_two_processes(criu_bin: Path, crit_bin: Path, compat_tmp: Path) -> None:
    wl = harness.start_workload("tcppair", compat_tmp / "fdkinds" / "tcppair")
    wl.wait_ticks(8)  # the lagging reader has filled both queues
    info = harness.dump_workload(wl, wl.rundir / "images", extra_args=TCP_ARGS)
    inv = _crit(crit_bin, info.images_dir / "inventory.img")["entries"][0]
    table = nft_lock_table(inv["dump_criu_run_id"])
    assert inv["network_lock_method"] == 1 and table in nft_tables(), "criu left no nftables lock"
    streams = [_crit(crit_bin, p)["entries"][0] for p in sorted(info.images_dir.glob("tcp-stream-*.img"))]
    assert len(streams) == 2
    assert any(s["inq_len"] for s in streams) and any(s.get("unsq_len") for s in streams), streams
    try:
        assert spice_restore(info.images_dir, *TCP_ARGS) == info.pid
        assert table not in nft_tables(), "spice restore must remove the dump's network lock"
        # TCP_NODELAY comes back where the dump saw it (CRIU 4.2 keeps it in the socket's tcp_opts)
        isks = _crit(crit_bin, info.images_dir / "files.img")["entries"]
        want = sum(1 for f in isks if f.get("isk", {}).get("tcp_opts", {}).get("nodelay"))
        assert want >= 1 and _tcp_nodelay_sockets(list(info.pids)) == want
        cont = assert_continues(info, list(info.pids), new_ticks=10)
        assert cont.pids == info.roles
    finally:
        if table in nft_tables():  # a failed restore leaves it (as criu does): don't leave it around
            from spice_criu.netfilter import NFPROTO_INET, nft_delete_table

            nft_delete_table(NFPROTO_INET, table.removeprefix("inet "))
        kill_restored(info)


def test_tcp_connection_needs_tcp_established(criu_bin: Path, crit_bin: Path, compat_tmp: Path) -> None:
    # with the network lock: a restored connection's unsent data goes out the moment repair mode
    # ends, and without the lock the peer's socket may not exist yet (CRIU relies on it too)
    wl = harness.start_workload("tcppair", compat_tmp / "fdkinds" / "tcppair-noflag")
    info = harness.dump_workload(wl, wl.rundir / "images", extra_args=TCP_ARGS)
    table = nft_lock_table(_crit(crit_bin, info.images_dir / "inventory.img")["entries"][0]["dump_criu_run_id"])
    try:
        p = spice("restore", "-D", str(info.images_dir), "-d", "-v4", "-o", "restore-noflag.log", check=False)
        assert p.returncode == 1
        assert "connected TCP socket in image: restore with --tcp-established" in p.stderr
        harness.reap_zombie_children()
        assert not any(harness.is_running(x) for x in info.pids), "a refused restore must leave no task"
        assert table in nft_tables(), "a refused restore keeps the dump's network lock"
        pid = spice_restore(info.images_dir, *TCP_ARGS)
        assert_continues(info, list(info.pids), new_ticks=3)
        kill_restored(info, pid)
    finally:
        if table in nft_tables():
            from spice_criu.netfilter import NFPROTO_INET, nft_delete_table

            nft_delete_table(NFPROTO_INET, table.removeprefix("inet "))


def test_shell_job_gets_the_restorers_terminal(criu_bin: Path, compat_tmp: Path) -> None:
    sh, info = fdkinds.shell_job_dump([criu_bin], compat_tmp / "fdkinds" / "ttyjob")
    fdkinds.check_shell_job_restore(sh, info)


def test_shell_job_terminal_needs_shell_job(criu_bin: Path, compat_tmp: Path) -> None:
    sh, info = fdkinds.shell_job_dump([criu_bin], compat_tmp / "fdkinds" / "ttyjob-noflag")
    try:
        p = spice("restore", "-D", str(info.images_dir), "-d", "-v4", "-o", "restore.log", check=False)
        assert p.returncode == 1 and "--shell-job" in p.stderr, p.stderr
        harness.reap_zombie_children()
        assert not harness.is_running(info.pid)
    finally:
        sh.close()


def test_inherit_fd_pipe_to_a_reader_outside_the_dump(criu_bin: Path, compat_tmp: Path) -> None:
    rundir = compat_tmp / "fdkinds" / "inherit"
    rundir.mkdir(parents=True)
    out = rundir / "inherit.out"
    r, w = os.pipe2(os.O_CLOEXEC)
    os.set_blocking(r, False)
    with open(rundir / "inherit.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-B", str(fdkinds.HERE / "inherit.py"), str(out)], cwd=rundir,
                                stdin=subprocess.DEVNULL, stdout=w, stderr=log, start_new_session=True,
                                close_fds=True)
    try:
        fdkinds.wait_for(lambda: len(harness.read_lines(out)[0]) >= 3, 15, "3 ticks")
        ino = os.fstat(w).st_ino
        images = rundir / "images"
        harness.criu_dump(proc.pid, images)
        proc.wait(10)
        got = [_read_pipe(r)]
        info = fdkinds.dump_info("inherit", (proc.pid,), rundir, out, images)
        token = info.pre_dump["main"].fields["token"]
        assert f"seq {info.last_tick} {token}\n" in got[0]
        # the task's stdout was pipe:[ino]; the test hands in its own copy of that pipe's write end
        pidfile = rundir / "restore.pid"
        p = subprocess.run([sys.executable, "-m", "spice_criu", "restore", "-D", str(images), "-d", "-v4", "-o",
                            "restore.log", "--pidfile", str(pidfile), "--inherit-fd", f"fd[{w}]:pipe:[{ino}]"],
                           cwd=REPO, pass_fds=(w,), capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        pid = int(pidfile.read_text())
        assert_continues(info, pid, new_ticks=3)
        want = "".join(f"seq {n} {token}\n" for n in range(info.last_tick + 1, info.last_tick + 4))

        def arrived() -> bool:
            got.append(_read_pipe(r))
            return want in "".join(got)

        fdkinds.wait_for(arrived, 5, "the restored task's output in the test's pipe")
        kill_restored(info, pid)
    finally:
        fdkinds.kill_quietly([proc.pid])
        proc.poll()
        os.close(r)
        os.close(w)


def _read_pipe(fd: int) -> str:
    data = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        data += chunk
    return data.decode()
