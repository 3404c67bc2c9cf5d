# SPDX-License-Identifier: MIT
"""inetidle: inet sockets sock_diag does not list: made but never bound or connected (as clients
hold them between socket() and connect(), and pools keep them), and a TCP socket only bound.

    python inetidle.py OUTFILE

It holds an IPv4 TCP socket with TCP_NODELAY, an IPv6 TCP socket, a UDP socket (none of them
bound), and a TCP socket bound to 127.0.0.1 but not listening. Every ~100 ms it appends
``tick=N role=main pid=P token=T seq=N nodelay=1 bport=PORT types=...`` as the sockets report
them (so a restore must bring back each socket, its option and its bound port). On SIGUSR1 it
connects the unbound TCP socket to the address in ``connect-to`` (a file in its cwd), sends its
token, and reports ``sent=1``.
"""

from __future__ import annotations

import signal
import socket
import sys

import ticks


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: inetidle.py OUTFILE")
    out = ticks.Out(sys.argv[1])
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    tcp6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    bound = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    bound.bind(("127.0.0.1", 0))
    go = []
    signal.signal(signal.SIGUSR1, lambda *_: go.append(1))
    sent = 0

    def step(tick: int) -> None:
        nonlocal sent
        if go and not sent:
            with open("connect-to") as f:
                port = int(f.read())
            tcp.connect(("127.0.0.1", port))
            tcp.sendall(f"{out.token:016x}\n".encode())
            sent = 1
        types = ",".join(f"{s.family.name}/{s.type.name}" for s in (tcp, tcp6, udp, bound))
        out.line(tick, nodelay=tcp.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY),
                 bport=bound.getsockname()[1], types=types, sent=sent)

    ticks.run(step)


if __name__ == "__main__":
    main()
