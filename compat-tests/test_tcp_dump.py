# SPDX-License-Identifier: MIT
"""`spice dump --tcp-established`: an established loopback TCP connection between two processes
(fdkinds/tcppair.py: data queued both ways, part of it never sent), dumped by spice under CRIU's
nftables network lock, then restored by real `criu restore --tcp-established` and by spice: the
connection carries on (both ends check every byte). The lock table spice builds is CRIU's, object
for object as the kernel reports them; --leave-running gives the connection back and removes the
lock; a failure after the lock does the same; the images agree with CRIU's for the same connection.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import fdkinds  # noqa: F401 - registers the tcppair workload
import harness
import pytest
from harness import assert_continues, criu_dump, criu_restore, kill_restored
from spice import REPO, spice, spice_restore
from test_rpc_pycriu import pycriu, pycriu_dump, pycriu_restore, spice_criu  # noqa: F401 - fixtures

from spice_criu.linux import netlink
from spice_criu.linux.netlink import NLM_F_DUMP, NLM_F_REQUEST
from spice_criu.netfilter import NFPROTO_INET, nft_delete_table, nft_lock_table, nft_tables

TCP_ARGS = ("--tcp-established", "--network-lock", "nftables")
for _name in ("tcppair6", "tcppair4in6"):  # tcppair over ::1, and over ::ffff:127.0.0.1
    harness.SPECS.setdefault(_name, harness.WorkloadSpec(
        _name, str(Path(fdkinds.__file__).parent / f"{_name}.py"), roles=("server", "client"),
        constants=("token", "conn"), steps=("seq",)))
harness.SPECS.setdefault("tcpext", harness.WorkloadSpec(
    "tcpext", str(Path(fdkinds.__file__).parent / "tcpext.py"), steps=("seq",)))


def _crit(crit: Path, image: Path) -> dict:
    out = subprocess.run([str(crit), "show", str(image)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def spice_tcp_dumper(pid: int, images: Path, leave_running: bool) -> subprocess.CompletedProcess[str]:
    images.mkdir(parents=True, exist_ok=True)
    return spice("dump", "-t", str(pid), "-D", str(images), "-v4", "-o", "dump.log", *TCP_ARGS,
                 *(["--leave-running"] if leave_running else []))


def _table_of(crit: Path, images: Path) -> str:
    inv = _crit(crit, images / "inventory.img")["entries"][0]
    assert inv["network_lock_method"] == 1, inv
    return nft_lock_table(inv["dump_criu_run_id"])


def _drop_table(table: str) -> None:
    if table in nft_tables():
        nft_delete_table(NFPROTO_INET, table)


def _established(crit: Path, images: Path) -> list[dict]:
    return [e["isk"] for e in _crit(crit, images / "files.img")["entries"]
            if e["type"] == "INETSK" and e["isk"]["state"] == "ESTABLISHED"]


# ------------------------------------------------------------------ the nftables table, as the kernel has it


def _attrs(body: bytes, off: int = 4) -> list[tuple[int, bytes]]:
    out = []
    while off + 4 <= len(body):
        alen, atype = struct.unpack_from("=HH", body, off)
        if alen < 4:
            break
        out.append((atype & 0x3FFF, body[off + 4 : off + alen]))
        off += (alen + 3) & ~3
    return out


def _nla_str(kind: int, value: str) -> bytes:
    data = value.encode() + b"\0"
    return struct.pack("=HH", 4 + len(data), kind) + data + b"\0" * (-len(data) % 4)


def _nft_dump(mtype: int, attrs: bytes = b"") -> list[bytes]:
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12) as nl:  # NETLINK_NETFILTER
        nl.settimeout(5)
        body = struct.pack("!BBH", NFPROTO_INET, 0, 0) + attrs
        msg = struct.pack("=IHHII", 16 + len(body), 10 << 8 | mtype, NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + body
        return netlink.request(nl, msg, 1 << 17)


def table_shape(table: str) -> dict[str, list]:
    """Chains, rules and sets of an nftables table as the kernel dumps them, minus the table name
    and the handles; and the keys of the elements of conns4/conns6."""
    shape: dict[str, list] = {}
    # (what, NFT_MSG_GET*, attributes dropped: handles)
    for what, mtype, handle in (("chains", 4, 2), ("rules", 7, 3), ("sets", 10, 16)):
        items = []
        for body in _nft_dump(mtype):
            a = _attrs(body)
            if dict(a).get(1, b"").rstrip(b"\0").decode() == table:  # NFTA_*_TABLE is attribute 1 in all three
                items.append([(k, v.hex()) for k, v in a if k not in (1, handle)])
        shape[what] = items
    for name in ("conns4", "conns6"):
        keys = set()
        for body in _nft_dump(13, _nla_str(1, table) + _nla_str(2, name)):  # NFT_MSG_GETSETELEM
            for kind, elems in _attrs(body):
                if kind == 3:  # NFTA_SET_ELEM_LIST_ELEMENTS { ELEM { KEY { VALUE } } }
                    for _k, elem in _attrs(elems, 0):
                        for k2, key in _attrs(elem, 0):
                            if k2 == 1:
                                keys.add(_attrs(key, 0)[0][1])
        shape[name] = sorted(keys)
    return shape


def expected_keys(conns: list[dict], family: str = "INET") -> list[bytes]:
    """The conns4 (conns6) elements CRIU adds for these connections: both directions of each."""
    keys = set()
    for c in conns:
        src, dst = (socket.inet_pton(socket.AF_INET6 if ":" in a[0] else socket.AF_INET, a[0])
                    for a in (c["src_addr"], c["dst_addr"]))
        if dst[:12] == bytes(10) + b"\xff\xff":  # IPv4-mapped: locked as IPv4
            src, dst = src[12:], dst[12:]
        if (len(src) == 4) != (family == "INET"):
            continue
        for a, ap, b, bp in ((src, c["src_port"], dst, c["dst_port"]), (dst, c["dst_port"], src, c["src_port"])):
            keys.add(a + struct.pack("!H2x", ap) + b + struct.pack("!H2x", bp))
    return sorted(keys)


def test_spice_dump_locks_the_network_like_criu_and_criu_restores_it(criu_bin: Path, crit_bin: Path,
                                                                     compat_tmp: Path) -> None:
    base = compat_tmp / "tcp-dump"
    ref = harness.start_workload("tcppair", base / "criu-ref")
    ref.wait_ticks(8)
    ref_info = harness.dump_workload(ref, ref.rundir / "images", extra_args=TCP_ARGS)
    ref_table = _table_of(crit_bin, ref_info.images_dir)
    try:
        criu_shape = table_shape(ref_table)
    finally:
        _drop_table(ref_table)  # nobody restores that one
    assert len(criu_shape["rules"]) == 6 and len(criu_shape["sets"]) == 2, criu_shape

    wl = harness.start_workload("tcppair", base / "tcppair")
    wl.wait_ticks(8)  # the lagging reader has filled both queues
    info = harness.dump_workload(wl, wl.rundir / "images", dumper=spice_tcp_dumper)
    table = _table_of(crit_bin, info.images_dir)
    try:
        assert table in nft_tables(), "a killing dump keeps the connections locked for the restore"
        shape = table_shape(table)
        for what in ("chains", "rules", "sets"):
            assert shape[what] == criu_shape[what], f"{what} of spice's lock table differ from CRIU's"
        conns = _established(crit_bin, info.images_dir)
        assert len(conns) == 2
        assert shape["conns4"] == expected_keys(conns) and shape["conns6"] == []
        assert criu_shape["conns4"] == expected_keys(_established(crit_bin, ref_info.images_dir))
        streams = [_crit(crit_bin, p)["entries"][0] for p in sorted(info.images_dir.glob("tcp-stream-*.img"))]
        assert sorted(int(p.stem.split("-")[-1], 16) for p in info.images_dir.glob("tcp-stream-*.img")) == \
            sorted(c["ino"] for c in conns)
        assert any(s["inq_len"] for s in streams) and any(s.get("unsq_len") for s in streams), streams

        assert criu_restore(info.images_dir, extra_args=("--tcp-established",)) == info.pid
        assert table not in nft_tables(), "criu restore removes the lock spice left"
        cont = assert_continues(info, list(info.pids), new_ticks=10)
        assert cont.pids == info.roles
    finally:
        _drop_table(table)
        kill_restored(info)


@pytest.mark.parametrize(("name", "tool"), [("tcppair", "spice"), ("tcppair6", "spice"), ("tcppair6", "criu"),
                                           ("tcppair4in6", "spice"), ("tcppair4in6", "criu")])
def test_spice_dump_of_a_tcp_connection_restores(name: str, tool: str, criu_bin: Path, crit_bin: Path,
                                                 compat_tmp: Path) -> None:
    wl = harness.start_workload(name, compat_tmp / "tcp-dump" / f"{name}-{tool}")
    wl.wait_ticks(8)
    info = harness.dump_workload(wl, wl.rundir / "images", dumper=spice_tcp_dumper)
    table = _table_of(crit_bin, info.images_dir)
    try:
        assert table in nft_tables()
        conns = _established(crit_bin, info.images_dir)
        assert len(conns) == 2
        shape = table_shape(table)
        assert (shape["conns4"], shape["conns6"]) == (expected_keys(conns, "INET"), expected_keys(conns, "INET6"))
        assert len(shape["conns6" if name == "tcppair6" else "conns4"]) == 2, shape  # both directions
        if tool == "spice":
            assert spice_restore(info.images_dir, *TCP_ARGS) == info.pid
        else:
            assert criu_restore(info.images_dir, extra_args=("--tcp-established",)) == info.pid
        assert table not in nft_tables(), f"{tool} restore removes the lock"
        cont = assert_continues(info, list(info.pids), new_ticks=10)
        assert cont.pids == info.roles
    finally:
        _drop_table(table)
        kill_restored(info)


class Peer(threading.Thread):
    """The server end of tcpext's connection, in the test process (outside the dumped tree): answers
    every message, checks their sequence, and records anything else (EOF, reset, a wrong message)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.lst = socket.create_server(("127.0.0.1", 0))
        self.port = self.lst.getsockname()[1]
        self.seen = 0
        self.errors: list[str] = []
        self.closing = False

    def run(self) -> None:
        conn, _ = self.lst.accept()
        token = None
        with conn:
            while True:
                msg = b""
                try:
                    while len(msg) < 16:
                        part = conn.recv(16 - len(msg))
                        if not part:
                            raise ConnectionError("EOF")
                        msg += part
                    tok, n = struct.unpack("<QQ", msg)
                    if (token is not None and tok != token) or n != self.seen + 1:
                        raise ValueError(f"message {n} (token {tok:x}) after {self.seen}")
                    token, self.seen = tok, n
                    conn.sendall(hashlib.sha256(msg).digest()[:16])
                except (OSError, ValueError) as e:
                    if not self.closing:
                        self.errors.append(f"after message {self.seen}: {e}")
                    return


@pytest.mark.parametrize("tool", ["criu", "spice"])
def test_connection_to_a_peer_outside_the_tree(tool: str, criu_bin: Path, crit_bin: Path, compat_tmp: Path) -> None:
    """Killed by the dump, the client's end closes without a word (repair mode, under the lock);
    restored, it carries on with the same peer, which never noticed."""
    peer = Peer()
    peer.start()
    rundir = compat_tmp / "tcp-dump" / f"tcpext-{tool}"
    rundir.mkdir(parents=True)
    (rundir / "tcpext.port").write_text(str(peer.port))
    wl = harness.start_workload("tcpext", rundir)
    wl.wait_ticks(5)
    info = harness.dump_workload(wl, wl.rundir / "images", dumper=spice_tcp_dumper)
    table = _table_of(crit_bin, info.images_dir)
    try:
        seen = peer.seen
        time.sleep(0.5)
        assert peer.is_alive() and not peer.errors, peer.errors
        assert peer.seen == seen, "the peer got messages from a dead client"
        if tool == "spice":
            assert spice_restore(info.images_dir, *TCP_ARGS) == info.pid
        else:
            assert criu_restore(info.images_dir, extra_args=("--tcp-established",)) == info.pid
        assert table not in nft_tables()
        assert_continues(info, info.pid, new_ticks=10)
        assert not peer.errors, peer.errors
        assert peer.seen >= seen + 10, (seen, peer.seen)
    finally:
        peer.closing = True
        _drop_table(table)
        kill_restored(info)
        peer.lst.close()


def test_rpc_dump_of_a_tcp_connection_restores_over_real_criu_rpc(pycriu: Any, spice_criu: Path,  # noqa: F811
                                                                  criu_bin: Path, crit_bin: Path,
                                                                  compat_tmp: Path) -> None:
    """pycriu's dump request with tcp_established and network_lock=NFTABLES, served by spice as
    `criu swrk`; pycriu's restore request (rst_sibling) served by real CRIU."""
    wl = harness.start_workload("tcppair", compat_tmp / "tcp-dump" / "tcppair-rpc")
    wl.wait_ticks(8)
    nftables = pycriu.rpc.criu_network_lock_method.Value("NFTABLES")
    info = harness.dump_workload(wl, wl.rundir / "images", dumper=lambda pid, d, lr: pycriu_dump(
        pycriu, spice_criu, pid, d, lr, tcp_established=True, network_lock=nftables))
    table = _table_of(crit_bin, info.images_dir)
    try:
        assert table in nft_tables()
        pid = pycriu_restore(pycriu, criu_bin, info.images_dir, log_file="restore-criu-rpc.log", tcp_established=True)
        assert pid == info.pid and harness.parent_of(pid) == os.getpid()
        assert table not in nft_tables()
        assert_continues(info, list(info.pids), new_ticks=10)
    finally:
        _drop_table(table)
        kill_restored(info)


# ------------------------------------------------------------------ --leave-running, and CRIU's images of it

#: tcp_stream_entry fields that move on while the connection runs between CRIU's and spice's dump
MOVING = {"inq_len", "inq_seq", "outq_len", "outq_seq", "unsq_len", "timestamp", "snd_wl1", "snd_wnd",
          "max_window", "rcv_wnd", "rcv_wup", "extra"}
#: inet_sk_entry fields that may move: the send queue (backlog of an established socket is
#: sock_diag's wqueue, as in CRIU) and the buffer sizes the kernel autotunes; everything else
#: (options, addresses, tcp_opts) must be equal (and everything is, for a stopped tree: below)
MOVING_ISK = {"backlog", "opts.so_sndbuf", "opts.so_rcvbuf"}


def _flat(d: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "extra":
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def _logged_table(images: Path) -> str:
    m = re.search(r"network locked: nftables table inet (\S+)", (images / "dump.log").read_text())
    assert m, "dump.log names no lock table"
    return m.group(1)


def test_leave_running_keeps_the_connection_and_images_match_criu(criu_bin: Path, crit_bin: Path,
                                                                  compat_tmp: Path) -> None:
    wl = harness.start_workload("tcppair", compat_tmp / "tcp-dump" / "tcppair-R")
    wl.wait_ticks(8)
    criu_dir, spice_dir = wl.rundir / "criu", wl.rundir / "spice"
    try:
        criu_dump(wl.pid, criu_dir, leave_running=True, extra_args=TCP_ARGS)
        spice_tcp_dumper(wl.pid, spice_dir, leave_running=True)
        table = _table_of(crit_bin, spice_dir)
        assert table == _logged_table(spice_dir)
        assert table not in nft_tables(), "--leave-running removes the lock"
        wl.wait_ticks(10)  # both ends still exchange and check every byte
        assert_continues(wl)

        by_port = {}
        for which, d in (("criu", criu_dir), ("spice", spice_dir)):
            for c in _established(crit_bin, d):
                by_port.setdefault(c["src_port"], {})[which] = c
        assert len(by_port) == 2 and all(len(v) == 2 for v in by_port.values()), by_port
        for port, pair in by_port.items():
            c, s = _flat(pair["criu"]), _flat(pair["spice"])
            diff = {k for k in c.keys() | s.keys() if c.get(k) != s.get(k)} - MOVING_ISK - {"id"}
            assert not diff, f"inetsk of port {port}: {[(k, c.get(k), s.get(k)) for k in sorted(diff)]}"
            name = f"tcp-stream-{pair['spice']['ino']:x}.img"
            cs = _crit(crit_bin, criu_dir / name)["entries"][0]
            ss = _crit(crit_bin, spice_dir / name)["entries"][0]
            assert cs.keys() == ss.keys(), (name, cs.keys() ^ ss.keys())
            diff = {k for k in cs if cs[k] != ss[k]} - MOVING
            assert not diff, f"{name}: {[(k, cs[k], ss[k]) for k in sorted(diff)]}"
            # the stream only moved forward in between (sequence numbers mod 2**32)
            for k in ("inq_seq", "outq_seq"):
                assert (ss[k] - cs[k]) % 2**32 < 2**31, (name, k, cs[k], ss[k])
    finally:
        wl.kill()


def test_images_of_a_stopped_connection_equal_criu_s(criu_bin: Path, crit_bin: Path, compat_tmp: Path) -> None:
    """Both processes SIGSTOPped (nothing reads or writes), then CRIU's and spice's -R dumps: the
    inetsk entries are equal, and so are the tcp-stream images, queue bytes included, except the
    TCP timestamp clock and snd_wl1, which CRIU's own window probe (sent with seq - 1 when its
    dump leaves repair mode) really moves on the peer. Both leave the tree stopped, as it was."""
    wl = harness.start_workload("tcppair", compat_tmp / "tcp-dump" / "tcppair-stopped")
    wl.wait_ticks(8)
    dirs = {"criu": wl.rundir / "criu", "spice": wl.rundir / "spice"}
    try:
        for p in wl.pids:
            os.kill(p, signal.SIGSTOP)
        time.sleep(0.5)  # in-flight segments land
        criu_dump(wl.pid, dirs["criu"], leave_running=True, extra_args=TCP_ARGS)
        time.sleep(0.5)
        spice_tcp_dumper(wl.pid, dirs["spice"], leave_running=True)
        assert all(harness.process_state(p) == "T" for p in wl.pids), "a stopped tree stays stopped"
        isk = {k: sorted((e["isk"] for e in _crit(crit_bin, d / "files.img")["entries"] if e["type"] == "INETSK"),
                         key=lambda e: e["ino"]) for k, d in dirs.items()}
        assert isk["criu"] == isk["spice"] and len(isk["spice"]) == 3
        names = sorted(p.name for p in dirs["spice"].glob("tcp-stream-*.img"))
        assert names == sorted(p.name for p in dirs["criu"].glob("tcp-stream-*.img")) and len(names) == 2
        for name in names:
            c, s = (_crit(crit_bin, d / name)["entries"][0] for d in dirs.values())
            diff = {k for k in c.keys() | s.keys() if c.get(k) != s.get(k)}
            assert diff <= {"timestamp", "snd_wl1"}, f"{name}: {[(k, c.get(k), s.get(k)) for k in sorted(diff)]}"
            assert (s["snd_wl1"] - c["snd_wl1"]) % 2**32 in (0, 1, 2**32 - 1), (name, c["snd_wl1"], s["snd_wl1"])
        assert any(_crit(crit_bin, dirs["spice"] / n)["entries"][0]["outq_len"] for n in names)
        for p in wl.pids:
            os.kill(p, signal.SIGCONT)
        wl.wait_ticks(5)
        assert_continues(wl)
    finally:
        wl.kill()


# ------------------------------------------------------------------ failures


def _run_dump(pid: int, images: Path, *extra: str, fault: str | None = None) -> subprocess.CompletedProcess[str]:
    images.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "SPICE_DUMP_FAULT"}
    if fault:
        env["SPICE_DUMP_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "spice_criu", "dump", "-t", str(pid), "-D", str(images), "-v4",
                           "-o", "dump.log", *extra], capture_output=True, text=True, cwd=REPO, env=env,
                          timeout=harness.scaled(120), stdin=subprocess.DEVNULL)


def _assert_untouched(wl: harness.Workload) -> None:
    for p in wl.pids:
        with open(f"/proc/{p}/status") as f:
            assert "TracerPid:\t0\n" in f.read(), f"{p} is still traced"
    wl.wait_ticks(5)  # data flows both ways again: no socket left in repair mode, no packet dropped
    assert_continues(wl)


def test_failure_after_the_lock_gives_the_connection_back(criu_bin: Path, compat_tmp: Path) -> None:
    wl = harness.start_workload("tcppair", compat_tmp / "tcp-dump" / "tcppair-fault")
    wl.wait_ticks(8)
    try:
        images = wl.rundir / "images-fault"
        p = _run_dump(wl.pid, images, *TCP_ARGS, fault="tcp-locked")
        assert p.returncode == 1, p.stderr
        lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
        assert lines == ["Error (spice/dump): fault injected at step tcp-locked"], p.stderr
        log = (images / "dump.log").read_text()
        assert "Turned repair on for socket" in log, "the fault must hit with a socket in repair mode"
        assert _logged_table(images) not in nft_tables(), "a failed dump removes its lock"
        assert sorted(x.name for x in images.iterdir() if x.name != "dump.log") == ["spice-dump.partial"]
        _assert_untouched(wl)
        # and it can be dumped for real afterwards
        ok = _run_dump(wl.pid, wl.rundir / "images-after", *TCP_ARGS, "--leave-running")
        assert ok.returncode == 0, ok.stderr
        _assert_untouched(wl)
    finally:
        wl.kill()


def test_sigkill_of_spice_after_the_lock_gives_the_connection_back(criu_bin: Path, compat_tmp: Path) -> None:
    """spice SIGKILLed with a socket in repair mode and the table in place: the kernel lets the tree
    go, and spice's guard process puts the socket out of repair mode and removes the lock."""
    wl = harness.start_workload("tcppair", compat_tmp / "tcp-dump" / "tcppair-kill")
    wl.wait_ticks(8)
    try:
        images = wl.rundir / "images-kill"
        p = _run_dump(wl.pid, images, *TCP_ARGS, fault="tcp-locked:kill")
        assert p.returncode == -signal.SIGKILL, (p.returncode, p.stderr)
        log = (images / "dump.log").read_text()
        assert "Turned repair on for socket" in log, "the kill must hit with a socket in repair mode"
        assert "the guard unlocks them" in log, log[-2000:]
        assert _logged_table(images) not in nft_tables(), "the guard removes the lock"
        _assert_untouched(wl)
    finally:
        wl.kill()


def test_iptables_lock_needs_iptables(criu_bin: Path, crit_bin: Path, compat_tmp: Path) -> None:
    """CRIU's default method: without the iptables tool the dump fails naming it, the tree runs on;
    with it, the connection is dumped and restored by criu."""
    wl = harness.start_workload("tcppair", compat_tmp / "tcp-dump" / "tcppair-ipt")
    wl.wait_ticks(4)
    try:
        if shutil.which("iptables") is None:
            p = _run_dump(wl.pid, wl.rundir / "images", "--tcp-established")
            assert p.returncode == 1, p.stderr
            assert "iptables not found: cannot lock TCP connection 127.0.0.1:" in p.stderr, p.stderr
            assert "Traceback" not in p.stderr
            _assert_untouched(wl)
            return
        def dumper(pid: int, d: Path, lr: bool) -> subprocess.CompletedProcess[str]:
            d.mkdir(parents=True, exist_ok=True)
            return spice("dump", "-t", str(pid), "-D", str(d), "-v4", "-o", "dump.log", "--tcp-established")

        info = harness.dump_workload(wl, wl.rundir / "images", dumper=dumper)
        assert _crit(crit_bin, info.images_dir / "inventory.img")["entries"][0].get("network_lock_method", 0) == 0
        try:
            assert criu_restore(info.images_dir, extra_args=("--tcp-established",)) == info.pid
            assert_continues(info, list(info.pids), new_ticks=5)
        finally:
            kill_restored(info)
    finally:
        wl.kill()


INFLIGHT = """
import socket, time
lst = socket.create_server(("127.0.0.1", 0), backlog=4)
peer = socket.create_connection(lst.getsockname())  # completed by the kernel, never accept()ed
open("ready", "w").close()
while True:
    time.sleep(0.05)
"""


def test_listener_with_connections_not_accepted_is_refused(criu_bin: Path, compat_tmp: Path) -> None:
    """As criu: connections in a listener's accept queue would be lost, so the dump refuses."""
    rundir = compat_tmp / "tcp-dump" / "inflight"
    rundir.mkdir(parents=True)
    (rundir / "inflight.py").write_text(INFLIGHT)
    proc = subprocess.Popen([sys.executable, "inflight.py"], cwd=rundir, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + harness.scaled(10)
        while not (rundir / "ready").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "inflight.py did not start"
            time.sleep(0.02)
        p = _run_dump(proc.pid, rundir / "images", *TCP_ARGS)
        assert p.returncode == 1, p.stderr
        assert re.fullmatch(r"Error \(spice/dump\): task \d+: fd \d+ is socket:\[\d+\] \(TCP\): 1 in-flight "
                            r"connection\(s\) not accepted yet: they can be ignored with the --skip-in-flight "
                            r"option\n", p.stderr), p.stderr
        assert proc.poll() is None and harness.process_state(proc.pid) in ("S", "R")
        with open(f"/proc/{proc.pid}/status") as f:
            assert "TracerPid:\t0\n" in f.read()
        assert _logged_table(rundir / "images") not in nft_tables()
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("lock", ["nftables", "skip"])
def test_without_tcp_established_the_dump_names_the_connection(lock: str, criu_bin: Path, compat_tmp: Path) -> None:
    wl = harness.start_workload("tcppair", compat_tmp / "tcp-dump" / f"tcppair-noflag-{lock}")
    wl.wait_ticks(3)
    try:
        images = wl.rundir / "images"
        p = _run_dump(wl.pid, images, "--network-lock", lock)
        assert p.returncode == 1, p.stderr
        lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and re.fullmatch(
            r"Error \(spice/dump\): task \d+: fd \d+ is socket:\[\d+\] \(TCP 127\.0\.0\.1:\d+ -> 127\.0\.0\.1:\d+.*\): "
            r"connected TCP socket, consider using --tcp-established option", lines[0]), p.stderr
        if lock == "nftables":
            assert _logged_table(images) not in nft_tables()
        _assert_untouched(wl)
    finally:
        wl.kill()


@pytest.mark.parametrize("feature", ["network_lock_nftables", "nftables", "tcp_half_closed"])
def test_check_feature_answers_like_criu_where_spice_can(criu_bin: Path, feature: str) -> None:
    """`spice check --feature` for the TCP dump's features as real CRIU reports them on this kernel
    (nf_tables; TCP_REPAIR on a half-closed connection)."""
    theirs = subprocess.run([str(criu_bin), "check", "--feature", feature], capture_output=True, text=True)
    ours = spice("check", "--feature", feature, check=False)
    assert theirs.returncode == 0, theirs.stdout + theirs.stderr
    assert ours.returncode == 0 and f"{feature} is supported" in ours.stdout, ours.stdout + ours.stderr
