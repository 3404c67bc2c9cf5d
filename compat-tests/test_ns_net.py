# SPDX-License-Identifier: MIT
"""A tree in a network namespace of its own (`unshare -n`, a container without a CNI: loopback
only), both directions: real `criu dump` -> `spice restore`, `spice dump` -> real `criu restore` and
`spice restore`, and spice writing the namespace's images as criu does (crit equal, the raw `ip`
and table dumps equal in what they say). The workload (workloads/netns.py) is a server and its
client talking over one TCP connection through the namespace's loopback (so --tcp-established, and
the namespace's network lock), and over a unix socketpair. After a restore both go on counting in a
new net namespace with lo up, and the listener accepts new connections made inside it. A veth in the
namespace is refused by name, the tree left running."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import fdkinds
import harness
import pytest
from harness import assert_continues

SPEC = harness.WorkloadSpec("netns", str(harness.WORKLOAD_DIR / "netns.py"), roles=("server", "client"),
                            constants=("token", "port"), steps=("seq",),
                            monotonic=("pongs", "unix", "accepted", "fresh"))
harness.SPECS.setdefault(SPEC.name, SPEC)
TCP = ("--tcp-established",)


def _ns(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/ns/net")


def _ask_token(pid: int, port: int) -> str:
    """Connect to 127.0.0.1:port inside pid's net namespace (a new connection to its listener)."""
    code = (f"import socket; s = socket.create_connection(('127.0.0.1', {port}), timeout=10); "
            "s.sendall(b'token\\n'); print(s.makefile().readline().strip())")
    r = subprocess.run(["nsenter", f"--net=/proc/{pid}/ns/net", sys.executable, "-c", code], capture_output=True,
                       text=True, timeout=harness.scaled(20))
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def check_restored(info: harness.DumpInfo, pid: int) -> None:
    """Both roles go on (pongs over the restored connection, datagrams over the pair) in one new net
    namespace with lo up; the listener answers a connection from the test and one from the client."""
    assert pid == info.pid
    pids = list(info.pids)
    assert_continues(info, pids, new_ticks=5)
    assert _ns(pids[0]) == _ns(pids[1]) != _ns(os.getpid())
    assert fdkinds.last_field(info, "lo", "server") == 1 and fdkinds.last_field(info, "lo", "client") == 1
    token = info.pre_dump["server"].fields["token"]
    port = int(info.pre_dump["server"].fields["port"])
    accepted = fdkinds.last_field(info, "accepted", "server")
    assert _ask_token(pid, port) == token
    os.kill(info.roles["client"], signal.SIGUSR1)
    fdkinds.wait_for(lambda: fdkinds.last_field(info, "fresh", "client") >= 1, 10, "the client's fresh connection")
    fdkinds.wait_for(lambda: fdkinds.last_field(info, "accepted", "server") >= accepted + 2, 10,
                     "the server to count both new connections")
    assert_continues(info, pids, new_ticks=2)


def _start(rundir: Path) -> harness.Workload:
    wl = harness.start_workload("netns", rundir)
    assert _ns(wl.pid) != _ns(os.getpid())
    return wl


@pytest.fixture(scope="module")
def criu_dump(criu_bin: Path, compat_tmp: Path) -> harness.DumpInfo:
    wl = _start(compat_tmp / "netns" / "criu")
    return harness.dump_workload(wl, wl.rundir / "images", extra_args=TCP)


@pytest.fixture(scope="module")
def spice_dump(criu_bin: Path, compat_tmp: Path) -> harness.DumpInfo:
    from spice import spice

    def dumper(pid: int, images: Path, leave_running: bool):
        images.mkdir(parents=True, exist_ok=True)
        return spice("dump", "-t", str(pid), "-D", str(images), "-v4", "-o", "dump.log", *TCP,
                     log=images / "dump.log")

    wl = _start(compat_tmp / "netns" / "spice")
    return harness.dump_workload(wl, wl.rundir / "images", dumper=dumper)


def _restore(info: harness.DumpInfo, tool: str) -> int:
    from spice import spice_restore

    if tool == "criu":
        return harness.criu_restore(info.images_dir, extra_args=TCP)
    return spice_restore(info.images_dir, *TCP)


def test_criu_dump_restores_under_spice(criu_dump: harness.DumpInfo) -> None:
    for _ in range(2):
        pid = _restore(criu_dump, "spice")
        check_restored(criu_dump, pid)
        harness.kill_restored(criu_dump, pid)


@pytest.mark.parametrize("tool", ["criu", "spice"])
def test_spice_dump_restores(spice_dump: harness.DumpInfo, tool: str) -> None:
    pid = _restore(spice_dump, tool)
    check_restored(spice_dump, pid)
    harness.kill_restored(spice_dump, pid)


# ------------------------------------------------------------------------------ the images


def _crit(crit: Path, path: Path) -> dict:
    from spice import spice

    out = json.loads(subprocess.run([str(crit), "show", str(path)], capture_output=True, text=True,
                                    check=True).stdout)
    assert json.loads(spice("crit", "show", str(path)).stdout) == out
    return out


def _ip_show(kind: str, path: Path) -> str:
    """What `ip <kind> showdump` reads from a raw `ip <kind> save` image (the raw bytes differ in
    the netlink sequence numbers ip puts in)."""
    with open(path, "rb") as f:
        r = subprocess.run(["ip", kind, "showdump"], stdin=f, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout


def _nlmsgs(path: Path) -> list[bytes]:
    """The netlink messages of a raw `ip ... save` image (after its 4-byte magic), their sequence
    number and port id (ip's own, different in every run) zeroed."""
    import struct

    data, out, off = path.read_bytes(), [], 4
    while off + 16 <= len(data):
        length = struct.unpack_from("=I", data, off)[0]
        out.append(data[off: off + 8] + bytes(8) + data[off + 16: off + length])
        off += max((length + 3) & ~3, 16)
    return out


def _nft(path: Path) -> dict[str, dict[str, list[str]]]:
    """An `nft list ruleset` text as table -> chain -> rules (chains come in creation order, which
    depends on what ran in the namespace before; counters without their counts: spice takes its
    sockets out of repair mode once read, and the lock drops what they send then)."""
    tables: dict[str, dict[str, list[str]]] = {}
    table = chain = None
    for line in path.read_text().splitlines():
        line = line.strip()
        if m := re.fullmatch(r"table (\S+ \S+) \{", line):
            table = tables.setdefault(m[1], {})
        elif m := re.fullmatch(r"chain (\S+) \{", line):
            chain = table.setdefault(m[1], [])
        elif line and line != "}":
            chain.append(re.sub(r"counter packets \d+ bytes \d+", "counter", line))
    return tables


def test_spice_dump_writes_netns_as_criu(crit_bin: Path, compat_tmp: Path) -> None:
    from spice import spice

    wl = _start(compat_tmp / "netns" / "both")
    try:
        theirs, ours = wl.rundir / "criu-images", wl.rundir / "spice-images"
        ours.mkdir()
        harness.criu_dump(wl.pid, theirs, leave_running=True, extra_args=TCP)
        spice("dump", "-t", str(wl.pid), "-D", str(ours), "-v4", "-o", "dump.log", "--leave-running", *TCP,
              log=ours / "dump.log")
        harness.assert_continues(wl, wl.pids, new_ticks=3)
        names = {p.name for p in theirs.glob("*-*.img") if re.match(r"(net|if|route|rule|ip|nft)", p.name)}
        assert names == {p.name for p in ours.glob("*-*.img") if re.match(r"(net|if|route|rule|ip|nft)", p.name)}
        ns_id = _crit(crit_bin, theirs / f"ids-{wl.pid}.img")["entries"][0]["net_ns_id"]
        assert ns_id == _crit(crit_bin, ours / f"ids-{wl.pid}.img")["entries"][0]["net_ns_id"]
        assert {f"netns-{ns_id}.img", f"netdev-{ns_id}.img", f"ifaddr-{ns_id}.img", f"route-{ns_id}.img",
                f"route6-{ns_id}.img", f"rule-{ns_id}.img", f"nftables-{ns_id}.img"} <= names
        for img in (f"netns-{ns_id}.img", f"netdev-{ns_id}.img"):
            assert _crit(crit_bin, ours / img) == _crit(crit_bin, theirs / img), img
        lo = _crit(crit_bin, ours / f"netdev-{ns_id}.img")["entries"]
        assert [(d["type"], d["name"], int(d["flags"], 16) & 1) for d in lo] == [("LOOPBACK", "lo", 1)]
        for kind, img in (("addr", "ifaddr"), ("route", "route"), ("route", "route6")):
            assert _ip_show(kind, ours / f"{img}-{ns_id}.img") == _ip_show(kind, theirs / f"{img}-{ns_id}.img"), img
        for img in ("ifaddr", "route", "route6", "rule"):
            assert _nlmsgs(ours / f"{img}-{ns_id}.img") == _nlmsgs(theirs / f"{img}-{ns_id}.img"), img
        assert len(_nlmsgs(ours / f"rule-{ns_id}.img")) == 3  # the kernel's default rules
        assert "127.0.0.1/8" in _ip_show("addr", ours / f"ifaddr-{ns_id}.img")
        for img in ("iptables", "ip6tables"):
            if (theirs / f"{img}-{ns_id}.img").exists():
                assert (ours / f"{img}-{ns_id}.img").read_bytes() == (theirs / f"{img}-{ns_id}.img").read_bytes()
        nft = _nft(ours / f"nftables-{ns_id}.img")
        assert nft == _nft(theirs / f"nftables-{ns_id}.img")
        assert "meta mark 0x0000c114 counter accept" in nft["ip filter"]["CRIU"]  # the lock
        for tool_dir in (theirs, ours):  # every socket of the tree is in its namespace
            files = _crit(crit_bin, tool_dir / "files.img")["entries"]
            socks = [e.get("isk") or e.get("usk") for e in files if e["type"] in ("INETSK", "UNIXSK")]
            assert len(socks) >= 5 and {s["ns_id"] for s in socks} == {ns_id}, (tool_dir, socks)
        assert not [ln for ln in subprocess.run(["nsenter", f"--net=/proc/{wl.pid}/ns/net", "nft", "list", "ruleset"],
                                                capture_output=True, text=True).stdout.splitlines() if "CRIU" in ln]
    finally:
        wl.kill()


def test_veth_refused_tree_left_running(compat_tmp: Path) -> None:
    from spice import assert_one_error, spice

    wl = _start(compat_tmp / "netns" / "veth")
    try:
        r = subprocess.run(["nsenter", f"--net=/proc/{wl.pid}/ns/net", "ip", "link", "add", "spv0", "type", "veth",
                            "peer", "name", "spv1"], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        images = wl.rundir / "images"
        images.mkdir()
        err = assert_one_error(spice("dump", "-t", str(wl.pid), "-D", str(images), "-o", "dump.log", *TCP,
                                     check=False), "dump")
        assert re.fullmatch(r"Error \(spice/dump\): network device spv[01] \(index \d+, kind veth\) in the tree's "
                            r"net namespace: not supported \(only loopback\)", err), err
        harness.assert_continues(wl, wl.pids, new_ticks=3)
        out = subprocess.run(["nsenter", f"--net=/proc/{wl.pid}/ns/net", "nft", "list", "ruleset"],
                             capture_output=True, text=True).stdout
        assert "CRIU" not in out
    finally:
        wl.kill()


@pytest.mark.parametrize(("fault", "lock"), [("tcp-locked", "iptables"), ("tcp-locked:kill", "iptables"),
                                            ("tcp-locked:kill", "nftables")])
def test_failed_dump_unlocks_the_namespace(compat_tmp: Path, fault: str, lock: str) -> None:
    """A dump failing (or spice SIGKILLed: its guard process) with the namespace locked and a
    connection read: the lock is removed, the connection and the tree go on."""
    wl = _start(compat_tmp / "netns" / f"{fault.replace(':', '-')}-{lock}")
    try:
        images = wl.rundir / "images"
        images.mkdir()
        env = {k: v for k, v in os.environ.items() if k != "SPICE_DUMP_FAULT"}
        env["SPICE_DUMP_FAULT"] = fault
        p = subprocess.run([sys.executable, "-m", "spice_criu", "dump", "-t", str(wl.pid), "-D", str(images), "-v4",
                            "-o", "dump.log", *TCP, "--network-lock", lock], capture_output=True, text=True,
                           cwd=harness.REPO, env=env,
                           timeout=harness.scaled(120), stdin=subprocess.DEVNULL)
        assert p.returncode == (-signal.SIGKILL if fault.endswith(":kill") else 1), p.stderr
        assert "net: Lock network" in (images / "dump.log").read_text()
        fdkinds.wait_for(lambda: "CRIU" not in subprocess.run(
            ["nsenter", f"--net=/proc/{wl.pid}/ns/net", "nft", "list", "ruleset"], capture_output=True,
            text=True).stdout, 10, "the namespace's lock to go")
        wl.wait_ticks(5)  # pongs flow again over the connection that was read in repair mode
        assert_continues(wl, wl.pids, new_ticks=3)
    finally:
        wl.kill()


def _ruleset(pid: int) -> str:
    return subprocess.run(["nsenter", f"--net=/proc/{pid}/ns/net", "nft", "list", "ruleset"], capture_output=True,
                          text=True, check=True).stdout


def test_nftables_lock_both_ways(crit_bin: Path, compat_tmp: Path) -> None:
    """--network-lock nftables: the namespace is locked by a table inet CRIU-<run id> whose chains
    drop everything unmarked (in the images, as criu writes it); each tool's restore removes it,
    and spice leaves no table of its own on the host."""
    from spice import spice, spice_restore

    nft = (*TCP, "--network-lock", "nftables")
    theirs = harness.dump_workload(_start(compat_tmp / "netns" / "nft-criu"), compat_tmp / "netns" / "nft-criu" / "i",
                                   extra_args=nft)

    def dumper(pid: int, images: Path, leave_running: bool):
        images.mkdir(parents=True, exist_ok=True)
        return spice("dump", "-t", str(pid), "-D", str(images), "-v4", "-o", "dump.log", *nft, log=images / "dump.log")

    ours = harness.dump_workload(_start(compat_tmp / "netns" / "nft-spice"), compat_tmp / "netns" / "nft-spice" / "i",
                                 dumper=dumper)

    def lock_of(info: harness.DumpInfo) -> tuple[str, dict]:
        inv = _crit(crit_bin, info.images_dir / "inventory.img")["entries"][0]
        assert inv["network_lock_method"] == 1
        ns_id = _crit(crit_bin, info.images_dir / f"ids-{info.pid}.img")["entries"][0]["net_ns_id"]
        rules = _nft(info.images_dir / f"nftables-{ns_id}.img")
        table = "inet " + ("inet CRIU-" + inv["dump_criu_run_id"])[:31].removeprefix("inet ")
        return table, rules.pop(table)

    assert lock_of(ours)[1] == lock_of(theirs)[1] == {
        "output": ["type filter hook output priority filter; policy drop;", "meta mark 0x0000c114 accept"],
        "input": ["type filter hook input priority filter; policy drop;", "meta mark 0x0000c114 accept"]}
    host = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=True).stdout
    assert lock_of(ours)[0] not in host
    for info, restore in ((theirs, lambda: spice_restore(theirs.images_dir, *TCP)),
                          (ours, lambda: harness.criu_restore(ours.images_dir, extra_args=TCP))):
        pid = restore()
        try:
            check_restored(info, pid)
            assert "CRIU" not in _ruleset(pid)
        finally:
            harness.kill_restored(info, pid)


def _refused_restore(images: Path, ids: tuple[int, ...], *needles: str) -> str:
    """spice restore of images fails with one error line holding needles, and leaves no task."""
    from spice import assert_one_error, spice

    err = assert_one_error(spice("restore", "-D", str(images), "-d", "-v4", "-o", "restore.log", *TCP, check=False),
                           "restore", *needles)
    for p in ids:
        fdkinds.wait_for(lambda p=p: not harness.is_running(p), 10, f"pid {p} to be gone")
    return err


def test_bad_namespace_images_fail_the_restore_cleanly(criu_dump: harness.DumpInfo, crit_bin: Path,
                                                       tmp_path: Path) -> None:
    """A corrupt ifaddr image, or a link spice does not make (a veth), fails the restore with one
    line naming it, before the tree runs, and nothing of it is left; the good images still restore."""
    import shutil

    ns_id = _crit(crit_bin, criu_dump.images_dir / f"ids-{criu_dump.pid}.img")["entries"][0]["net_ns_id"]
    bad = tmp_path / "bad-ifaddr"
    shutil.copytree(criu_dump.images_dir, bad)
    (bad / f"ifaddr-{ns_id}.img").write_bytes(b"garbage!")
    _refused_restore(bad, criu_dump.pids, f"ip addr restore < ifaddr-{ns_id}.img in the tree's net namespace")
    veth = tmp_path / "veth"
    shutil.copytree(criu_dump.images_dir, veth)
    from spice_criu.images import codec

    img = codec.loads((veth / f"netdev-{ns_id}.img").read_bytes())
    lo = img.entries[0].msg
    other = type(lo)()
    other.CopyFrom(lo)
    other.type, other.name, other.ifindex = 2, "spv0", 7
    img.entries.append(type(img.entries[0])(other, None))
    (veth / f"netdev-{ns_id}.img").write_bytes(codec.dumps(img))
    assert [d["name"] for d in _crit(crit_bin, veth / f"netdev-{ns_id}.img")["entries"]] == ["lo", "spv0"]
    _refused_restore(veth, criu_dump.pids, "network device spv0 (index 7, VETH) in the tree's net namespace: "
                     "not supported (only loopback)")
    pid = _restore(criu_dump, "spice")
    check_restored(criu_dump, pid)
    harness.kill_restored(criu_dump, pid)


CONFIG = ("sysctl -qw net.unix.max_dgram_qlen=77 net.ipv4.ping_group_range='0 1000' net.ipv4.conf.all.forwarding=1 "
          "net.ipv4.conf.lo.rp_filter=2 net.ipv6.conf.lo.hop_limit=33 net.ipv4.conf.default.arp_announce=1; "
          "ip addr add 10.77.0.1/32 dev lo; ip route add 10.78.0.0/24 dev lo; ip -6 route add fd00:78::/64 dev lo; "
          "ip rule add from 10.77.0.1 lookup 100 prio 1000; nft add table inet mine; nft add chain inet mine c; "
          "nft add rule inet mine c tcp dport 9 counter accept")
SHOW = ("sysctl -n net.unix.max_dgram_qlen net.ipv4.ping_group_range net.ipv4.conf.all.forwarding "
        "net.ipv4.conf.lo.rp_filter net.ipv6.conf.lo.hop_limit net.ipv4.conf.default.arp_announce; "
        "ip -br addr show lo; ip route; ip -6 route show dev lo; ip rule; nft list table inet mine")


def _in_ns(pid: int, script: str) -> str:
    r = subprocess.run(["nsenter", f"--net=/proc/{pid}/ns/net", "sh", "-ec", script], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return re.sub(r"counter packets \d+ bytes \d+", "counter", r.stdout)


def test_configured_namespace_round_trips(crit_bin: Path, compat_tmp: Path) -> None:
    """A namespace set up beyond its defaults (sysctls of the namespace and of lo, ping_group_range,
    an address, IPv4/IPv6 routes, a rule, an nftables table of its own): both tools write it alike,
    and each restores the other's images to the same configuration."""
    from spice import spice

    wl = _start(compat_tmp / "netns" / "config")
    _in_ns(wl.pid, CONFIG)
    before = _in_ns(wl.pid, SHOW)
    assert "10.77.0.1/32" in before and "0\t1000" in before and "dport 9" in before, before

    def both(pid: int, images: Path, leave_running: bool):
        harness.criu_dump(pid, images / "criu", leave_running=True, extra_args=TCP)
        (images / "spice").mkdir(parents=True)
        spice("dump", "-t", str(pid), "-D", str(images / "spice"), "-v4", "-o", "dump.log", "--leave-running",
              *TCP, log=images / "spice" / "dump.log")

    info = harness.dump_workload(wl, wl.rundir / "images", leave_running=True, dumper=both)
    ns_id = _crit(crit_bin, info.images_dir / "criu" / f"ids-{info.pid}.img")["entries"][0]["net_ns_id"]
    for img in (f"netns-{ns_id}.img", f"netdev-{ns_id}.img"):
        assert _crit(crit_bin, info.images_dir / "spice" / img) == _crit(crit_bin, info.images_dir / "criu" / img)
    import dataclasses

    for tool, dumped_by in (("spice", "criu"), ("criu", "spice")):
        sub = dataclasses.replace(info, images_dir=info.images_dir / dumped_by)
        pid = _restore(sub, tool)
        try:
            assert _in_ns(pid, SHOW) == before, (tool, dumped_by)
            check_restored(sub, pid)
        finally:
            harness.kill_restored(sub, pid)
            info.resume_offset = sub.resume_offset
