# SPDX-License-Identifier: MIT
"""Netlink message framing (struct nlmsghdr) for sock_diag and nftables requests."""

from __future__ import annotations

import os
import struct

TYPE_CHECKING = False  # socket (enum, selectors...) and collections cost start-up: annotations only
if TYPE_CHECKING:
    import socket
    from collections.abc import Iterator

NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x2, 0x4, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
_HDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid


def messages(buf: bytes) -> Iterator[tuple[int, int, int, bytes]]:
    """(type, flags, seq, payload) of every message in a datagram; stops at a malformed header."""
    off = 0
    while off + _HDR.size <= len(buf):
        length, mtype, flags, seq, _pid = _HDR.unpack_from(buf, off)
        if length < _HDR.size:
            return
        yield mtype, flags, seq, buf[off + _HDR.size : off + length]
        off += (length + 3) & ~3


def attributes(body: bytes, off: int) -> dict[int, bytes]:
    """The attributes (struct nlattr, type -> payload) that follow a message's fixed header at off;
    stops at a malformed one."""
    out: dict[int, bytes] = {}
    while off + 4 <= len(body):
        alen, atype = struct.unpack_from("=HH", body, off)
        if alen < 4:
            break
        out[atype & 0x3FFF] = body[off + 4 : off + alen]  # (NLA_F_NESTED / NLA_F_NET_BYTEORDER off)
        off += (alen + 3) & ~3
    return out


def error_of(body: bytes) -> int:
    """The errno an NLMSG_ERROR carries (0: an acknowledgement)."""
    return -struct.unpack_from("=i", body)[0]


def request(sock: socket.socket, msg: bytes, bufsize: int = 1 << 17) -> list[bytes]:
    """Send one request and collect the payloads of the answer (a multi-part dump or a single reply)
    up to NLMSG_DONE; an NLMSG_ERROR with an errno raises OSError."""
    sock.send(msg)
    out: list[bytes] = []
    while True:
        multi = False
        for mtype, flags, _seq, body in messages(sock.recv(bufsize)):
            multi = multi or bool(flags & NLM_F_MULTI)
            if mtype == NLMSG_DONE:
                return out
            if mtype == NLMSG_ERROR:
                err = error_of(body)
                if err:
                    raise OSError(err, os.strerror(err))
                return out
            out.append(body)
        if not multi:
            return out
