# SPDX-License-Identifier: MIT
"""tcpclose: one process holding both ends of a loopback TCP connection (and its listener), that
keeps running whatever happens to the connection, and says every tick what its two sockets look
like from the inside. The workload of the --tcp-close tests.

    python tcpclose.py OUTFILE

While the connection works, every ~100 ms tick sends a 16-byte message each way and checks it.
Every tick appends
    tick=N role=main pid=P token=T seq=N a=OBS b=OBS
where OBS describes the connecting (a) and the accepted (b) socket: the TCP state of TCP_INFO, the
errno of getpeername() (or "peer"), the bound port, TCP_NODELAY, SO_REUSEADDR, O_NONBLOCK, and
the result of a non-blocking recv (EOF, data or an errno name), e.g. ``st1/peer/port5000/nd1/ra0/nb0/EAGAIN``.
After a restore with --tcp-close both sockets are closed (``st7/ENOTCONN/port0/...``) and the
ticks go on. A wrong message on a working connection: a FAIL line and exit 1.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct
import sys
import time

from tcppair import Out, sleep_tick  # the same output and ~100 ms ticks, re-paced after a checkpoint gap


def observe(s: socket.socket) -> str:
    """What the socket looks like from the inside, using only calls that cannot block or raise
    SIGPIPE (no send: a closed socket would make it EPIPE)."""
    parts = [f"st{s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]}"]
    try:
        s.getpeername()
        parts.append("peer")
    except OSError as e:
        parts.append(errno.errorcode.get(e.errno or 0, str(e.errno)))
    parts.append(f"port{s.getsockname()[1]}")
    parts.append(f"nd{s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)}")
    parts.append(f"ra{s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)}")
    parts.append(f"nb{int(bool(fcntl.fcntl(s.fileno(), fcntl.F_GETFL) & os.O_NONBLOCK))}")
    try:
        got = s.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK)
        parts.append("EOF" if not got else "data")
    except OSError as e:
        parts.append(errno.errorcode.get(e.errno or 0, str(e.errno)))
    return "/".join(parts)


def main() -> None:
    out = Out(sys.argv[1], "main")
    token = int.from_bytes(os.urandom(8), "little") | 1
    me = os.getpid()
    lsn = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsn.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsn.bind(("127.0.0.1", 0))
    lsn.listen(1)
    a = socket.create_connection(lsn.getsockname())
    a.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    b, _ = lsn.accept()
    tick, start = 0, time.monotonic()
    while True:
        tick += 1
        if a.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0] == 1:  # established: use it
            msg = struct.pack("<QQ", token, tick)
            try:
                a.sendall(msg)
                got = b""
                while len(got) < 16:
                    part = b.recv(16 - len(got))
                    if not part:
                        break
                    got += part
                b.sendall(got)
                back = a.recv(16)
            except OSError as e:
                got = back = f"{e}".encode()
            if got != msg or back != msg:
                out.fail(f"tick {tick}: the connection garbled the message ({got!r}, {back!r})")
        out.line(f"tick={tick} role=main pid={me} token={token:016x} seq={tick} a={observe(a)} b={observe(b)}")
        start = sleep_tick(start, tick)


if __name__ == "__main__":
    main()
