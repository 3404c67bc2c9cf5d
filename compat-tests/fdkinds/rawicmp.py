# SPDX-License-Identifier: MIT
"""rawicmp: a raw ICMP socket, as ping-style health checkers hold it.

    python rawicmp.py OUTFILE

The socket filters out ICMP echo requests (ICMP_FILTER), so that on loopback it sees only the
replies. Every ~100 ms it pings 127.0.0.1 through it and waits for the matching echo reply, then
appends ``tick=N role=main pid=P token=T seq=N filter=MASK pong=1`` (pong=0: no reply in 2 s).
"""

from __future__ import annotations

import socket
import struct
import sys
import time

import ticks

SOL_RAW, ICMP_FILTER, ECHO_REQUEST, ECHO_REPLY = 255, 1, 8, 0


def checksum(data: bytes) -> int:
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF


def ping(s: socket.socket, ident: int, seq: int) -> int:
    head = struct.pack("!BBHHH", ECHO_REQUEST, 0, 0, ident, seq & 0xFFFF)
    s.sendto(struct.pack("!BBHHH", ECHO_REQUEST, 0, checksum(head + b"spice!"), ident, seq & 0xFFFF) + b"spice!",
             ("127.0.0.1", 0))
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        s.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            packet = s.recv(2048)
        except TimeoutError:
            break
        typ, _code, _sum, rid, rseq = struct.unpack_from("!BBHHH", packet, (packet[0] & 0xF) * 4)
        if typ == ECHO_REQUEST:
            return -1  # the filter is gone
        if typ == ECHO_REPLY and rid == ident and rseq == seq & 0xFFFF:
            return 1
    return 0


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: rawicmp.py OUTFILE")
    out = ticks.Out(sys.argv[1])
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    s.setsockopt(SOL_RAW, ICMP_FILTER, struct.pack("=I", 1 << ECHO_REQUEST))

    def step(tick: int) -> None:
        pong = ping(s, out.token & 0xFFFF, tick)
        out.line(tick, filter=f"{struct.unpack('=I', s.getsockopt(SOL_RAW, ICMP_FILTER, 4))[0]:x}", pong=pong)

    ticks.run(step)

if __name__ == "__main__":
    main()
