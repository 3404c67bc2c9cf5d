# SPDX-License-Identifier: MIT
"""packets: a packet socket, as DHCP clients and capture tools hold one.

    python packets.py OUTFILE [ring]

A SOCK_DGRAM packet socket for IPv4 (ETH_P_IP), bound to the loopback interface, with
PACKET_AUXDATA on and the interface joined in all-multicast mode (a multicast-list entry). Every
~100 ms the process sends a UDP datagram carrying its token and the tick to itself on 127.0.0.1
and looks for it among what the packet socket captured (``seen=1``); it appends
``tick=N role=main pid=P token=T seq=N aux=1 seen=1``. With ``ring`` the socket also gets a
memory-mapped receive ring (PACKET_RX_RING), which dumps refuse.
"""

from __future__ import annotations

import socket
import struct
import sys

import ticks

ETH_P_IP, SOL_PACKET, PACKET_ADD_MEMBERSHIP, PACKET_AUXDATA, PACKET_RX_RING = 0x0800, 263, 1, 8, 5
PACKET_MR_ALLMULTI = 2


def main() -> None:
    if len(sys.argv) not in (2, 3):
        sys.exit("usage: packets.py OUTFILE [ring]")
    out = ticks.Out(sys.argv[1])
    pk = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))
    pk.bind(("lo", ETH_P_IP))
    pk.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
    lo = socket.if_nametoindex("lo")
    pk.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, struct.pack("=iHH8s", lo, PACKET_MR_ALLMULTI, 0, b""))
    if sys.argv[2:] == ["ring"]:
        pk.setsockopt(SOL_PACKET, PACKET_RX_RING, struct.pack("=4I", 4096, 4, 2048, 8))
    pk.setblocking(False)
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def step(tick: int) -> None:
        mark = f"spice-{out.token:016x}-{tick}".encode()
        tx.sendto(mark, rx.getsockname())
        rx.recv(256)
        seen = 0
        while True:
            try:
                packet = pk.recv(65536)
            except BlockingIOError:
                break
            seen |= mark in packet
        out.line(tick, aux=pk.getsockopt(SOL_PACKET, PACKET_AUXDATA), seen=seen)

    ticks.run(step)


if __name__ == "__main__":
    main()
