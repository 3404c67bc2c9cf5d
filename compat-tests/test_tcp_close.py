# SPDX-License-Identifier: MIT
"""--tcp-close: established TCP connections come back closed, the way real CRIU 4.2.1 does it.

The workload (fdkinds/tcpclose.py) holds both ends of a loopback connection and reports every tick
what its two sockets look like from the inside (TCP state, peer, bound port, TCP_NODELAY,
SO_REUSEADDR, O_NONBLOCK, what a read gets). For a dump made by real CRIU with --tcp-close, and
for one made with --tcp-established (its lock removed all the same), `spice restore --tcp-close`
must give the task exactly what `criu restore --tcp-close` gives it, and the task carries on.
A --tcp-close dump restored without the option is refused before any task exists, as criu does.
`spice dump --tcp-close` saves what `criu dump --tcp-close` saves, and both tools restore it.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import fdkinds  # noqa: F401 - registers the tcpclose workload
import harness
import pytest
from harness import DumpInfo, assert_continues, criu_restore, kill_restored
from spice import spice, spice_restore

from spice_criu.netfilter import NFPROTO_INET, nft_delete_table, nft_lock_table, nft_tables


def _inventory(crit: Path, images: Path) -> dict:
    out = subprocess.run([str(crit), "show", str(images / "inventory.img")], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout)["entries"][0]


def _observed(info: DumpInfo) -> list[tuple[str, str]]:
    """(a=, b=) of the first three lines of the restored run."""
    lines, _ = harness.read_lines(info.out_file, info.resume_offset)
    got = [(ln.fields["a"], ln.fields["b"]) for ln in lines if not ln.failed][:3]
    assert len(got) == 3, [ln.text for ln in lines]
    return got


def _restore_both_ways(info: DumpInfo) -> dict[str, list[tuple[str, str]]]:
    seen = {}
    for tool in ("criu", "spice"):
        if tool == "criu":
            pid = criu_restore(info.images_dir, extra_args=("--tcp-close",))
        else:
            pid = spice_restore(info.images_dir, "--tcp-close")
        assert pid == info.pid
        try:
            assert_continues(info, pid, new_ticks=3)
            seen[tool] = _observed(info)
        finally:
            kill_restored(info, pid)
    return seen


@pytest.fixture(scope="module")
def closed_dump(criu_bin: Path, compat_tmp: Path) -> DumpInfo:
    wl = harness.start_workload("tcpclose", compat_tmp / "tcp-close" / "closed")
    wl.wait_ticks(4)
    lines, _ = harness.read_lines(wl.out_file)
    assert lines[-1].fields["a"].startswith("st1/peer/"), lines[-1].text  # really connected when dumped
    return harness.dump_workload(wl, wl.rundir / "images", extra_args=("--tcp-close",))


def test_a_tcp_close_dump_restores_closed_like_criu(closed_dump: DumpInfo, crit_bin: Path) -> None:
    info = closed_dump
    inv = _inventory(crit_bin, info.images_dir)
    assert inv["tcp_close"] is True
    assert not list(info.images_dir.glob("tcp-stream-*.img"))  # nothing of the connections saved
    seen = _restore_both_ways(info)
    assert seen["spice"] == seen["criu"]
    for a, b in seen["spice"]:  # closed: TCP_CLOSE, no peer, unbound, reads see end of file
        assert a.startswith("st7/ENOTCONN/port0/nd1/") and a.endswith("/EOF"), a  # TCP_NODELAY kept
        assert b.startswith("st7/ENOTCONN/port0/nd0/ra1/") and b.endswith("/EOF"), b  # SO_REUSEADDR kept


def test_a_tcp_close_dump_needs_the_option(closed_dump: DumpInfo) -> None:
    info = closed_dump
    p = spice("restore", "-D", str(info.images_dir), "-d", "-o", "no-option.log", check=False)
    assert p.returncode == 1
    assert p.stderr.strip() == "Error (spice/restore): Need to set the --tcp-close options."
    assert "Need to set the --tcp-close options." in (info.images_dir / "no-option.log").read_text()
    assert not os.path.exists(f"/proc/{info.pid}"), "a refused restore created the task"
    # real criu refuses it the same way
    r = subprocess.run([str(harness.CRIU_BIN), "restore", "-D", str(info.images_dir), "-d", "-o", "criu-no.log"],
                       capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert r.returncode == 1
    assert "Need to set the --tcp-close options." in (info.images_dir / "criu-no.log").read_text()


def test_an_established_dump_restored_closed_drops_the_lock(criu_bin: Path, crit_bin: Path,
                                                            compat_tmp: Path) -> None:
    """A --tcp-established dump (nftables lock) restored with --tcp-close: closed as criu closes it,
    and spice removes the dump's lock table like a normal restore of it would."""
    wl = harness.start_workload("tcpclose", compat_tmp / "tcp-close" / "established")
    wl.wait_ticks(4)
    info = harness.dump_workload(wl, wl.rundir / "images",
                                 extra_args=("--tcp-established", "--network-lock", "nftables"))
    inv = _inventory(crit_bin, info.images_dir)
    table = nft_lock_table(inv["dump_criu_run_id"])
    try:
        assert list(info.images_dir.glob("tcp-stream-*.img"))
        pid = spice_restore(info.images_dir, "--tcp-close")
        try:
            assert table not in nft_tables(), "the dump's lock is still there"
            assert_continues(info, pid, new_ticks=3)
            spice_seen = _observed(info)
        finally:
            kill_restored(info, pid)
        pid = criu_restore(info.images_dir, extra_args=("--tcp-close",))
        try:
            assert_continues(info, pid, new_ticks=3)
            assert _observed(info) == spice_seen
        finally:
            kill_restored(info, pid)
        assert all(a.startswith("st7/ENOTCONN/port0/") for a, _ in spice_seen)
    finally:
        if table in nft_tables():
            nft_delete_table(NFPROTO_INET, table)


def _inet_entries(crit: Path, images: Path) -> dict[int, dict]:
    out = subprocess.run([str(crit), "show", str(images / "files.img")], capture_output=True, text=True, check=True)
    return {e["isk"]["ino"]: {k: v for k, v in e["isk"].items() if k != "id"}
            for e in json.loads(out.stdout)["entries"] if e["type"] == "INETSK"}


def test_spice_dump_with_tcp_close_saves_what_criu_saves(criu_bin: Path, crit_bin: Path, compat_tmp: Path) -> None:
    """`spice dump --tcp-close`: no connection state, no lock, the inventory says so; the sockets'
    entries equal those of `criu dump --tcp-close` of the same process (moments apart); real
    criu and spice restore the images with --tcp-close alike."""
    wl = harness.start_workload("tcpclose", compat_tmp / "tcp-close" / "spice-dump")
    wl.wait_ticks(4)
    criu_dir = wl.rundir / "criu-images"
    harness.criu_dump(wl.pid, criu_dir, leave_running=True, extra_args=("--tcp-close",))
    tables = set(nft_tables())

    def dumper(pid: int, images: Path, leave_running: bool) -> subprocess.CompletedProcess[str]:
        images.mkdir(parents=True, exist_ok=True)
        return spice("dump", "-t", str(pid), "-D", str(images), "-v4", "-o", "dump.log", "--tcp-close")

    info = harness.dump_workload(wl, wl.rundir / "images", dumper=dumper)
    assert set(nft_tables()) == tables, "a --tcp-close dump locks nothing"
    assert _inventory(crit_bin, info.images_dir)["tcp_close"] is True
    assert not list(info.images_dir.glob("tcp-stream-*.img"))
    spice_sk, criu_sk = _inet_entries(crit_bin, info.images_dir), _inet_entries(crit_bin, criu_dir)
    assert spice_sk == criu_sk
    assert sorted(e["state"] for e in spice_sk.values()) == ["ESTABLISHED", "ESTABLISHED", "LISTEN"]
    seen = _restore_both_ways(info)
    assert seen["spice"] == seen["criu"]
    assert all(a.startswith("st7/ENOTCONN/port0/") and b.startswith("st7/ENOTCONN/port0/") for a, b in seen["spice"])
