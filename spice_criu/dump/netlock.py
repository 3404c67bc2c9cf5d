# SPDX-License-Identifier: MIT
"""The network lock of a dump: keep every packet of the dumped TCP connections away while their
state is read, and (by default) until they are restored, exactly the way CRIU 4.2 does it.

``--network-lock nftables``: right after the freeze, whatever the tree holds, one table
``inet CRIU-<dump run id>`` (the name cut to 31 characters, CRIU's 32-byte buffer) with CRIU's
content: chains ``output`` and ``input`` (filter hooks, priority 0), each first accepting packets
marked 0xC114 (the restorer's own), then dropping what matches the sets ``conns4`` / ``conns6``
(saddr . sport . daddr . dport); each connection adds its two directions to the set before its
socket goes into repair mode. Restore (criu's or spice's) deletes the table; a dump with
--leave-running or a failed dump deletes it itself. Built over raw nfnetlink batches: no nft binary
or libnftables needed.

``--network-lock iptables`` (CRIU's default): per connection, a DROP rule in INPUT and in OUTPUT
(``-m mark ! --mark 0xC114``, inserted with ``-I``), removed again with ``-D``; needs the iptables /
ip6tables tools, and says so when they are missing. ``skip``: nothing.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess

from ..errors import SpiceError
from ..log import log
from ..netfilter import (
    NFPROTO_INET,
    NFPROTO_IPV4,
    NFPROTO_IPV6,
    SOCCR_MARK,
    attr,
    iptables_rule,
    nft_delete_table,
    nft_lock_table,
    str_attr,
)
from ..netfilter import batch as nft_batch

NFT_MSG_NEWTABLE, NFT_MSG_NEWCHAIN, NFT_MSG_NEWRULE, NFT_MSG_NEWSET, NFT_MSG_NEWSETELEM = 0, 3, 6, 9, 12
NLM_F_EXCL, NLM_F_CREATE, NLM_F_APPEND = 0x200, 0x400, 0x800
NLA_F_NESTED = 0x8000
NF_INET_LOCAL_IN, NF_INET_LOCAL_OUT = 1, 3
NF_DROP, NF_ACCEPT = 0, 1
NFT_META_MARK, NFT_META_NFPROTO, NFT_META_L4PROTO = 3, 15, 16
NFT_PAYLOAD_NETWORK_HEADER, NFT_PAYLOAD_TRANSPORT_HEADER = 1, 2
NFT_REG_VERDICT, NFT_REG_1, NFT_REG32_00 = 0, 1, 8
# nft's datatype ids, concatenated 6 bits each (nft's TYPE_BITS) into a set's key type
TYPE_IPADDR, TYPE_IP6ADDR, TYPE_INET_SERVICE = 7, 8, 13
#: NFTA_SET_USERDATA of the sets as nft (libnftables in CRIU) writes it for a 4-field concatenated
#: key: libnftnl TLVs (key byte order; the key's concat description). Only `nft list` reads it; same
#: bytes for conns4 and conns6, so `nft list table` shows spice's table exactly as CRIU's.
SET_USERDATA = bytes.fromhex("000400000000031200040d000000010a00000004040000000100")


# ------------------------------------------------------------------------------ nfnetlink encoding


def _nest(kind: int, *parts: bytes) -> bytes:
    return attr(kind | NLA_F_NESTED, b"".join(parts))


def _be32(kind: int, value: int) -> bytes:
    return attr(kind, struct.pack("!I", value))


def _expr(name: str, *attrs: bytes) -> bytes:
    return _nest(1, str_attr(1, name), _nest(2, *attrs))  # NFTA_LIST_ELEM { NFTA_EXPR_NAME, NFTA_EXPR_DATA }


def _meta(key: int, dreg: int) -> bytes:
    return _expr("meta", _be32(1, dreg), _be32(2, key))  # NFTA_META_DREG, NFTA_META_KEY


def _cmp_eq(sreg: int, data: bytes) -> bytes:
    return _expr("cmp", _be32(1, sreg), _be32(2, 0), _nest(3, attr(1, data)))  # SREG, OP eq, DATA{VALUE}


def _payload(base: int, offset: int, length: int, dreg: int) -> bytes:
    return _expr("payload", _be32(1, dreg), _be32(2, base), _be32(3, offset), _be32(4, length))


def _lookup(set_name: str, set_id: int, sreg: int) -> bytes:
    return _expr("lookup", str_attr(1, set_name), _be32(2, sreg), _be32(4, set_id))  # SET, SREG, SET_ID


def _verdict(code: int) -> bytes:
    # immediate: DREG = verdict register, DATA { VERDICT { CODE } }
    return _expr("immediate", _be32(1, NFT_REG_VERDICT), _nest(2, _nest(2, _be32(1, code))))


def _concat_type(*types: int) -> int:
    out = 0
    for t in types:
        out = out << 6 | t
    return out


#: per address family: set name, nfproto, address length, key type, source/destination offsets
_FAMILIES = {
    socket.AF_INET: ("conns4", NFPROTO_IPV4, 4, _concat_type(TYPE_IPADDR, TYPE_INET_SERVICE, TYPE_IPADDR,
                                                             TYPE_INET_SERVICE), 12, 16),
    socket.AF_INET6: ("conns6", NFPROTO_IPV6, 16, _concat_type(TYPE_IP6ADDR, TYPE_INET_SERVICE, TYPE_IP6ADDR,
                                                               TYPE_INET_SERVICE), 8, 24),
}


def _regs(addr_len: int) -> list[int]:
    """The registers of saddr . sport . daddr . dport, each field from a 32-bit boundary (as nft)."""
    out, slot = [], 0
    for size in (addr_len, 4, addr_len, 4):
        out.append(NFT_REG_1 if slot == 0 else NFT_REG32_00 + slot)
        slot += size // 4
    return out


def _conn_rule(family: int) -> list[bytes]:
    """`ip[6] saddr . tcp sport . ip[6] daddr . tcp dport @connsN drop` as nft compiles it for an
    inet table (with its implicit `meta nfproto` and `meta l4proto tcp` dependencies)."""
    name, nfproto, alen, _key, soff, doff = _FAMILIES[family]
    rs, rsp, rd, rdp = _regs(alen)
    return [_meta(NFT_META_NFPROTO, NFT_REG_1), _cmp_eq(NFT_REG_1, bytes([nfproto])),
            _meta(NFT_META_L4PROTO, NFT_REG_1), _cmp_eq(NFT_REG_1, bytes([socket.IPPROTO_TCP])),
            _payload(NFT_PAYLOAD_NETWORK_HEADER, soff, alen, rs), _payload(NFT_PAYLOAD_TRANSPORT_HEADER, 0, 2, rsp),
            _payload(NFT_PAYLOAD_NETWORK_HEADER, doff, alen, rd), _payload(NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2, rdp),
            _lookup(name, 1 if family == socket.AF_INET else 2, NFT_REG_1), _verdict(NF_DROP)]


def _batch(msgs: list[tuple[int, int, bytes]], what: str) -> None:
    """One nftables transaction of the inet family (all or nothing), every message acknowledged."""
    try:
        nft_batch(msgs, NFPROTO_INET)
    except OSError as e:
        raise SpiceError("network-lock", f"nftables: {what}: {e.strerror or e}") from None


# ------------------------------------------------------------------------------ the lock


def probe_nftables() -> bool:
    """Whether this kernel takes CRIU's lock table (nf_tables with concatenated set keys): what
    `criu check --feature network_lock_nftables` reports. Builds and deletes a throw-away table."""
    lock = NetworkLock("nftables", f"probe-{os.getpid()}")
    try:
        lock.begin()
    except SpiceError:
        return False
    lock.unlock()
    return True


class Conn:
    """The addresses of one TCP connection (as sock_diag reports them: u32 words, network order)."""

    __slots__ = ("family", "src", "sport", "dst", "dport")

    def __init__(self, family: int, src: list[int], sport: int, dst: list[int], dport: int) -> None:
        raw_src = struct.pack(f"<{len(src)}I", *src)
        raw_dst = struct.pack(f"<{len(dst)}I", *dst)
        if family == socket.AF_INET6 and raw_dst[8:12] == b"\0\0\xff\xff":  # IPv4-mapped: CRIU locks it as IPv4
            family, raw_src, raw_dst = socket.AF_INET, raw_src[12:16], raw_dst[12:16]
        self.family = family
        n = 4 if family == socket.AF_INET else 16
        self.src, self.dst = raw_src[:n].ljust(n, b"\0"), raw_dst[:n].ljust(n, b"\0")
        self.sport, self.dport = sport, dport

    def text(self, peer_first: bool = False) -> tuple[str, int, str, int]:
        a = (socket.inet_ntop(self.family, self.src), self.sport)
        b = (socket.inet_ntop(self.family, self.dst), self.dport)
        return (*b, *a) if peer_first else (*a, *b)

    def __str__(self) -> str:
        s, sp, d, dp = self.text()
        return f"{s}:{sp} - {d}:{dp}"


class NetworkLock:
    """One dump's network lock (method: iptables, nftables or skip; run_id: inventory's id)."""

    def __init__(self, method: str, run_id: str) -> None:
        self.method = method
        self.table = nft_lock_table(run_id)  # without the "inet " family prefix
        self.table_made = False
        self.locked: list[Conn] = []  # iptables: the connections whose rules are in place
        self.elements: set[tuple[int, bytes]] = set()

    # -- nftables

    def begin(self) -> None:
        """CRIU's network_lock() for a tree in our net namespace: the nftables table, empty sets."""
        if self.method != "nftables":
            return
        t = self.table
        chain = lambda name, hook: (NFT_MSG_NEWCHAIN, NLM_F_CREATE, str_attr(1, t) + str_attr(3, name)  # noqa: E731
                                    + _nest(4, _be32(1, hook), _be32(2, 0)) + str_attr(7, "filter"))
        rule = lambda chain_name, exprs: (NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND,  # noqa: E731
                                          str_attr(1, t) + str_attr(2, chain_name) + _nest(4, *exprs))
        accept_marked = [_meta(NFT_META_MARK, NFT_REG_1), _cmp_eq(NFT_REG_1, struct.pack("=I", SOCCR_MARK)),
                         _verdict(NF_ACCEPT)]
        msgs = [(NFT_MSG_NEWTABLE, NLM_F_CREATE | NLM_F_EXCL, str_attr(1, t)),
                chain("output", NF_INET_LOCAL_OUT), rule("output", accept_marked),
                chain("input", NF_INET_LOCAL_IN), rule("input", accept_marked)]
        for set_id, family in enumerate((socket.AF_INET, socket.AF_INET6), start=1):
            name, _nfproto, alen, key_type, _s, _d = _FAMILIES[family]
            msgs.append((NFT_MSG_NEWSET, NLM_F_CREATE, str_attr(1, t) + str_attr(2, name) + _be32(3, 0)
                         + _be32(4, key_type) + _be32(5, 2 * alen + 8) + _be32(10, set_id)
                         + attr(13, SET_USERDATA)))
            msgs += [rule("output", _conn_rule(family)), rule("input", _conn_rule(family))]
        _batch(msgs, f"creating table inet {t}")
        self.table_made = True
        log.info(f"network locked: nftables table inet {t}")

    def _element(self, c: Conn, reverse: bool) -> tuple[int, bytes]:
        a, ap, b, bp = (c.dst, c.dport, c.src, c.sport) if reverse else (c.src, c.sport, c.dst, c.dport)
        return c.family, a + struct.pack("!H2x", ap) + b + struct.pack("!H2x", bp)

    def _nft_lock(self, c: Conn) -> None:
        # CRIU adds {dst . dport . src . sport} then {src . sport . dst . dport}
        keys = [k for k in (self._element(c, True), self._element(c, False)) if k not in self.elements]
        if not keys:
            return
        name = _FAMILIES[c.family][0]
        elems = b"".join(_nest(1, _nest(1, attr(1, key))) for _fam, key in keys)
        _batch([(NFT_MSG_NEWSETELEM, NLM_F_CREATE, str_attr(1, self.table) + str_attr(2, name) + _nest(3, elems))],
               f"locking connection {c}")
        self.elements.update(keys)

    # -- iptables

    def _iptables(self, c: Conn, lock: bool) -> None:
        tool_name = "iptables" if c.family == socket.AF_INET else "ip6tables"
        tool = shutil.which(tool_name)
        if tool is None:
            raise SpiceError("network-lock", f"{tool_name} not found: cannot lock TCP connection {c} with "
                             "--network-lock iptables (use --network-lock nftables)")
        done = []
        for chain, peer_first in (("INPUT", True), ("OUTPUT", False)):
            s, sp, d, dp = c.text(peer_first)
            cmd = iptables_rule(tool, "-I" if lock else "-D", chain, s, sp, d, dp)
            r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
            if r.returncode:
                if lock:
                    for undo in done:  # roll back, as CRIU does
                        subprocess.run([*undo[:4], "-D", *undo[5:]], stdin=subprocess.DEVNULL, capture_output=True)
                    raise SpiceError("network-lock", f"{' '.join(cmd)}: {r.stderr.strip() or 'failed'}")
                log.warn("network-lock", f"{' '.join(cmd)}: {r.stderr.strip()}")
            done.append(cmd)

    # -- both

    def lock(self, c: Conn) -> None:
        """Keep the packets of connection c away (before its socket goes into repair mode)."""
        if self.method == "nftables":
            if not self.table_made:
                raise SpiceError("network-lock", f"connection {c}: no nftables lock table")
            self._nft_lock(c)
        elif self.method == "iptables":
            self._iptables(c, True)
            self.locked.append(c)
        else:
            log.info(f"Not locking {c} connection (--network-lock skip)")
            return
        log.info(f"Locked {c} connection ({self.method})")

    def unlock(self) -> None:
        """Let the packets through again (a dump that leaves the tree running, or failed)."""
        for c in reversed(self.locked):
            try:
                self._iptables(c, False)
            except SpiceError as e:
                log.warn("network-lock", e.message)
        self.locked.clear()
        if self.table_made:
            try:
                nft_delete_table(NFPROTO_INET, self.table)
            except OSError as e:
                log.warn("network-lock", f"can't remove nftables table inet {self.table}: {e.strerror}")
            self.table_made = False
            self.elements.clear()
            log.info("network unlocked")
