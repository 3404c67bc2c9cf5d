# SPDX-License-Identifier: MIT
"""The network lock of a TCP dump, shared by the side that takes it (dump/netlock.py) and the side
that removes it (restore/tcp.py): nftables over raw nfnetlink (what CRIU does through libnftables,
without the library or the nft binary) and CRIU's iptables DROP rules.
"""

from __future__ import annotations

import os
import socket
import struct

from .linux import netlink
from .linux.netlink import NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NLMSG_ERROR

SOCCR_MARK = 0xC114  # packets of the restorer itself (libsoccr's mark) pass the lock
NETLINK_NETFILTER, NFNL_SUBSYS_NFTABLES = 12, 10
NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END = 16, 17
NFT_MSG_GETTABLE, NFT_MSG_DELTABLE = 1, 2
NFTA_TABLE_NAME = 1
NFPROTO_UNSPEC, NFPROTO_INET, NFPROTO_IPV4, NFPROTO_IPV6 = 0, 1, 2, 10


def attr(kind: int, data: bytes) -> bytes:
    return struct.pack("=HH", 4 + len(data), kind) + data + b"\0" * (-len(data) % 4)


def str_attr(kind: int, value: str) -> bytes:
    return attr(kind, value.encode() + b"\0")


def msg(mtype: int, flags: int, seq: int, family: int, payload: bytes = b"", res_id: int = 0) -> bytes:
    """One nfnetlink message: nlmsghdr + nfgenmsg + attributes."""
    body = struct.pack("!BBH", family, 0, res_id) + payload
    return struct.pack("=IHHII", 16 + len(body), mtype, flags, seq, 0) + body


def batch(msgs: list[tuple[int, int, bytes]], family: int = NFPROTO_INET) -> None:
    """Send (nft message type, extra flags, payload) messages as one nftables transaction (all or
    nothing) and wait for every acknowledgement; OSError with the kernel's errno on a refusal."""
    seq0 = 1
    parts = [msg(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, seq0, NFPROTO_UNSPEC, res_id=NFNL_SUBSYS_NFTABLES)]
    want = set()
    for i, (mtype, flags, payload) in enumerate(msgs, start=seq0 + 1):
        parts.append(msg(NFNL_SUBSYS_NFTABLES << 8 | mtype, NLM_F_REQUEST | NLM_F_ACK | flags, i, family, payload))
        want.add(i)
    parts.append(msg(NFNL_MSG_BATCH_END, NLM_F_REQUEST, seq0 + len(msgs) + 1, NFPROTO_UNSPEC,
                     res_id=NFNL_SUBSYS_NFTABLES))
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER) as nl:
        nl.settimeout(5)
        nl.send(b"".join(parts))
        while want:
            for mtype, _flags, seq, body in netlink.messages(nl.recv(65536)):
                if mtype != NLMSG_ERROR:
                    continue
                err = netlink.error_of(body)
                if err:
                    raise OSError(err, os.strerror(err))
                want.discard(seq)


def nft_lock_table(run_id: str) -> str:
    """CRIU's lock table name: snprintf("inet CRIU-%s", run id) into a 32-byte buffer."""
    return ("inet CRIU-" + run_id)[:31].removeprefix("inet ")


def nft_delete_table(family: int, name: str) -> None:
    """`nft delete table <family> <name>` (OSError ENOENT if there is none)."""
    batch([(NFT_MSG_DELTABLE, 0, str_attr(NFTA_TABLE_NAME, name))], family)


def nft_tables(family: int = NFPROTO_UNSPEC) -> list[str]:
    """Names of the nftables tables of a family (`nft list tables`)."""
    out = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER) as nl:
        nl.settimeout(5)
        req = msg(NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETTABLE, NLM_F_REQUEST | NLM_F_DUMP, 1, family)
        for body in netlink.request(nl, req, 65536):
            name = netlink.attributes(body, 4).get(NFTA_TABLE_NAME)  # (after the nfgenmsg)
            if name is not None:
                out.append(name.rstrip(b"\0").decode())
    return out


def iptables_rule(tool: str, op: str, chain: str, src: str, sport: int, dst: str, dport: int) -> list[str]:
    """CRIU's iptables lock rule for one direction of a connection (op: -I to lock, -D to unlock)."""
    return [tool, "-w", "-t", "filter", op, chain, "--protocol", "tcp", "-m", "mark", "!", "--mark",
            hex(SOCCR_MARK), "--source", src, "--sport", str(sport), "--destination", dst, "--dport", str(dport),
            "-j", "DROP"]
