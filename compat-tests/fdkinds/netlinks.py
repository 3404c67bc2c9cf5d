# SPDX-License-Identifier: MIT
"""netlinks: netlink sockets as daemons keep them (route monitors, generic netlink clients).

    python netlinks.py OUTFILE

It holds a NETLINK_ROUTE socket bound by the kernel (portid = its pid) to group RTMGRP_LINK and
joined to group 5 (RTNLGRP_IPV4_IFADDR), and a NETLINK_GENERIC socket it never bound. If its cwd
holds a file ``join-33``, the route socket also joins group 33 (past the 32 groups criu's image
can hold). Every ~100 ms it asks the route socket for the loopback link (RTM_GETLINK) and reads
the answer, and appends ``tick=N role=main pid=P token=T seq=N addr=PORTID/GROUPS member=LIST
generic=PORTID lo=1`` (lo=1: the kernel answered with the loopback link).
"""

from __future__ import annotations

import os
import socket
import struct
import sys

import ticks

SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NETLINK_LIST_MEMBERSHIPS = 270, 1, 9
RTM_GETLINK, RTM_NEWLINK, NLM_F_REQUEST, RTMGRP_LINK = 18, 16, 1, 1
NETLINK_GENERIC = 16


def ask_lo(s: socket.socket, seq: int) -> int:
    ifinfo = struct.pack("=BxHiII", socket.AF_UNSPEC, 0, socket.if_nametoindex("lo"), 0, 0)
    s.send(struct.pack("=IHHII", 16 + len(ifinfo), RTM_GETLINK, NLM_F_REQUEST, seq, 0) + ifinfo)
    while True:
        buf = s.recv(65536)
        _len, mtype, _flags, rseq, _pid = struct.unpack_from("=IHHII", buf)
        if rseq == seq:  # (link events of the group may come in between)
            return int(mtype == RTM_NEWLINK)


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: netlinks.py OUTFILE")
    out = ticks.Out(sys.argv[1])
    route = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    route.bind((0, RTMGRP_LINK))
    route.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, 5)
    if os.path.exists("join-33"):
        route.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, 33)
    generic = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC)

    def step(tick: int) -> None:
        lo = ask_lo(route, tick)
        portid, groups = route.getsockname()
        words = route.getsockopt(SOL_NETLINK, NETLINK_LIST_MEMBERSHIPS, 16)
        member = ",".join(f"{w:x}" for w in struct.unpack(f"={len(words) // 4}I", words))
        out.line(tick, addr=f"{portid}/{groups:x}", member=member, generic=generic.getsockname()[0], lo=lo)

    ticks.run(step)

if __name__ == "__main__":
    main()
