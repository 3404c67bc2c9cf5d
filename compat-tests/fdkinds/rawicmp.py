# SPDX-License-Identifier: MIT
"""rawicmp: a raw ICMP socket, as ping-style health checkers hold it.

    python rawicmp.py OUTFILE        (rawicmp6.py: the same with ICMPv6 over ::1)

The socket filters out ICMP echo requests (ICMP_FILTER / ICMP6_FILTER), so that on loopback it
sees only the replies. Every ~100 ms it pings the loopback address through it and waits for the
matching echo reply, then appends ``tick=N role=main pid=P token=T seq=N filter=MASK pong=1``
(pong=0: no reply in 2 s; -1: it saw its own request, so the filter is gone).
"""

from __future__ import annotations

import socket
import struct
import sys
import time

import ticks

V6 = False  # rawicmp6.py sets it
SOL_RAW, ICMP_FILTER, ICMP6_FILTER = 255, 1, 1


def checksum(data: bytes) -> int:
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF


def kinds() -> tuple[int, int]:
    """(echo request, echo reply) types."""
    return (128, 129) if V6 else (8, 0)


def ping(s: socket.socket, ident: int, seq: int) -> int:
    request, reply = kinds()
    head = struct.pack("!BBHHH", request, 0, 0, ident, seq & 0xFFFF)
    csum = 0 if V6 else checksum(head + b"spice!")  # the kernel sums ICMPv6 itself
    packet = struct.pack("!BBHHH", request, 0, csum, ident, seq & 0xFFFF) + b"spice!"
    s.sendto(packet, ("::1" if V6 else "127.0.0.1", 0))
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        s.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            packet = s.recv(2048)
        except TimeoutError:
            break
        off = 0 if V6 else (packet[0] & 0xF) * 4  # an ICMPv6 socket gets no IP header
        typ, _code, _sum, rid, rseq = struct.unpack_from("!BBHHH", packet, off)
        if typ == request:
            return -1
        if typ == reply and rid == ident and rseq == seq & 0xFFFF:
            return 1
    return 0


def get_filter(s: socket.socket) -> str:
    if V6:
        return ",".join(f"{w:x}" for w in struct.unpack("=8I", s.getsockopt(socket.IPPROTO_ICMPV6, ICMP6_FILTER, 32)))
    return f"{struct.unpack('=I', s.getsockopt(SOL_RAW, ICMP_FILTER, 4))[0]:x}"


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: rawicmp.py OUTFILE")
    out = ticks.Out(sys.argv[1])
    if V6:
        s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        words = [0] * 8
        words[128 // 32] |= 1 << (128 % 32)  # ICMP6_FILTER_SETBLOCK(echo request)
        s.setsockopt(socket.IPPROTO_ICMPV6, ICMP6_FILTER, struct.pack("=8I", *words))
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        s.setsockopt(SOL_RAW, ICMP_FILTER, struct.pack("=I", 1 << 8))  # echo request

    def step(tick: int) -> None:
        out.line(tick, filter=get_filter(s), pong=ping(s, out.token & 0xFFFF, tick))

    ticks.run(step)


if __name__ == "__main__":
    main()
