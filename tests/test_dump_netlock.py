# SPDX-License-Identifier: MIT
"""dump/netlock.py without the kernel: the registers and set keys of CRIU's nftables lock, IPv4-mapped
connections locked as IPv4, and CRIU's iptables commands (the kernel side is compat-tests/test_tcp_dump.py)."""

from __future__ import annotations

import os
import socket
import struct
import subprocess

import pytest

from spice_criu.dump import netlock
from spice_criu.dump.netlock import Conn, NetworkLock
from spice_criu.errors import SpiceError


def words(raw: bytes) -> list[int]:
    """sock_diag's u32 words (network byte order in memory, read as host u32)."""
    return list(struct.unpack(f"<{len(raw) // 4}I", raw))


def test_concatenated_key_registers_follow_nft() -> None:
    # saddr . sport . daddr . dport from 32-bit boundaries: NFT_REG_1, then NFT_REG32_01...
    assert netlock._regs(4) == [1, 9, 10, 11]
    assert netlock._regs(16) == [1, 12, 13, 17]


def test_ipv4_mapped_connection_is_locked_as_ipv4() -> None:
    m = lambda a: words(socket.inet_pton(socket.AF_INET6, a))  # noqa: E731
    c = Conn(socket.AF_INET6, m("::ffff:127.0.0.1"), 4000, m("::ffff:127.0.0.2"), 5000)
    assert c.family == socket.AF_INET and str(c) == "127.0.0.1:4000 - 127.0.0.2:5000"
    v6 = Conn(socket.AF_INET6, m("::1"), 4000, m("::1"), 5000)
    assert v6.family == socket.AF_INET6 and len(v6.src) == 16


def test_set_elements_are_both_directions_with_padded_ports() -> None:
    c = Conn(socket.AF_INET, words(socket.inet_aton("10.0.0.1")), 80, words(socket.inet_aton("10.0.0.2")), 4242)
    lock = NetworkLock("nftables", "0123")
    fam, key = lock._element(c, reverse=False)
    assert fam == socket.AF_INET and key == bytes([10, 0, 0, 1, 0, 80, 0, 0, 10, 0, 0, 2, 0x10, 0x92, 0, 0])
    assert lock._element(c, reverse=True)[1] == key[8:] + key[:8]
    assert lock.table == "CRIU-0123"


def test_iptables_rules_are_criu_s(monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[list[str]] = []
    monkeypatch.setattr(netlock.shutil, "which", lambda name: f"/sbin/{name}")
    monkeypatch.setattr(netlock.subprocess, "run",
                        lambda cmd, **kw: ran.append(cmd) or subprocess.CompletedProcess(cmd, 0, "", ""))
    c = Conn(socket.AF_INET, words(socket.inet_aton("127.0.0.1")), 1000, words(socket.inet_aton("127.0.0.1")), 2000)
    lock = NetworkLock("iptables", "x")
    lock.lock(c)
    tail = ["--protocol", "tcp", "-m", "mark", "!", "--mark", "0xc114"]
    assert ran == [
        ["/sbin/iptables", "-w", "-t", "filter", "-I", "INPUT", *tail, "--source", "127.0.0.1", "--sport", "2000",
         "--destination", "127.0.0.1", "--dport", "1000", "-j", "DROP"],
        ["/sbin/iptables", "-w", "-t", "filter", "-I", "OUTPUT", *tail, "--source", "127.0.0.1", "--sport", "1000",
         "--destination", "127.0.0.1", "--dport", "2000", "-j", "DROP"],
    ]
    ran.clear()
    lock.unlock()
    assert [cmd[4:6] for cmd in ran] == [["-D", "INPUT"], ["-D", "OUTPUT"]]


def test_iptables_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netlock.shutil, "which", lambda name: None)
    c = Conn(socket.AF_INET6, words(socket.inet_pton(socket.AF_INET6, "::1")), 1,
             words(socket.inet_pton(socket.AF_INET6, "::1")), 2)
    with pytest.raises(SpiceError, match=r"ip6tables not found: cannot lock TCP connection ::1:1 - ::1:2"):
        NetworkLock("iptables", "x").lock(c)


def test_skip_locks_nothing() -> None:
    lock = NetworkLock("skip", "x")
    lock.begin()
    lock.lock(Conn(socket.AF_INET, [0], 1, [0], 2))
    assert not lock.table_made and not lock.locked


def test_nftables_probe_leaves_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    from spice_criu.netfilter import nft_tables

    if os.geteuid() != 0:
        pytest.fail("needs root (CAP_NET_ADMIN) like the rest of the suite")
    assert netlock.probe_nftables() is True  # this kernel has nf_tables (the compat tests use it)
    assert f"CRIU-probe-{os.getpid()}" not in nft_tables()
    monkeypatch.setattr(netlock, "_batch", lambda msgs, what: (_ for _ in ()).throw(SpiceError("x", what)))
    assert netlock.probe_nftables() is False


def test_iptables_rules_match_criu_s_so_unlock_can_delete_them() -> None:
    """The restore deletes exactly the rule the dump inserted (an unmatched -D leaves the lock)."""
    from spice_criu.netfilter import iptables_rule

    lock = iptables_rule("iptables", "-I", "INPUT", "127.0.0.1", 80, "127.0.0.2", 4242)
    unlock = iptables_rule("iptables", "-D", "INPUT", "127.0.0.1", 80, "127.0.0.2", 4242)
    assert lock[4] == "-I" and unlock[4] == "-D" and lock[:4] + lock[5:] == unlock[:4] + unlock[5:]
    assert " ".join(lock[5:]) == ("INPUT --protocol tcp -m mark ! --mark 0xc114 --source 127.0.0.1 --sport 80 "
                                  "--destination 127.0.0.2 --dport 4242 -j DROP")
