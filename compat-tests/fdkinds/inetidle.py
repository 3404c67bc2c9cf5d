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

import os
import signal
import socket
import sys
import time

TICK = 0.1


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: inetidle.py OUTFILE")
    token = int.from_bytes(os.urandom(8), "little") | 1
    out = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    tcp6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    bound = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    bound.bind(("127.0.0.1", 0))
    go = []
    signal.signal(signal.SIGUSR1, lambda *_: go.append(1))
    sent = 0
    start = time.monotonic()
    tick = 0
    while True:
        tick += 1
        if go and not sent:
            with open("connect-to") as f:
                port = int(f.read())
            tcp.connect(("127.0.0.1", port))
            tcp.sendall(f"{token:016x}\n".encode())
            sent = 1
        nodelay = tcp.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        types = ",".join(f"{s.family.name}/{s.type.name}" for s in (tcp, tcp6, udp, bound))
        os.write(out, f"tick={tick} role=main pid={os.getpid()} token={token:016x} seq={tick} nodelay={nodelay} "
                      f"bport={bound.getsockname()[1]} types={types} sent={sent}\n".encode())
        delay = start + tick * TICK - time.monotonic()
        if delay < -1.0:  # restored after a pause: pace from now on
            start = time.monotonic() - tick * TICK
        elif delay > 0:
            time.sleep(delay)


if __name__ == "__main__":
    main()
