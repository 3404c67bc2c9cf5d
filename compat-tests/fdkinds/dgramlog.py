# SPDX-License-Identifier: MIT
"""dgramlog: a datagram client connected one way to a bound server, as a program's syslog()
connection to syslogd's /dev/log (the server is not connected back).

    python dgramlog.py OUTFILE

The child binds ``log.sock`` (absolute path, in the run dir) and every tick counts what it received
(``got``); the parent made its socket first (a lower fd, dumped before the server's), connects it
to ``log.sock`` and sends a message every tick (``sent``).
"""

from __future__ import annotations

import os
import socket
import sys

import ticks


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: dgramlog.py OUTFILE")
    out = ticks.Out(sys.argv[1])
    path = os.path.abspath("log.sock")
    client = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    if os.fork() == 0:
        client.close()
        server.setblocking(False)
        mine = ticks.Out(sys.argv[1], "child", out.token)
        got = 0

        def serve(tick: int) -> None:
            nonlocal got
            while True:
                try:
                    server.recv(256)
                except BlockingIOError:
                    break
                got += 1
            mine.line(tick, got=got)

        ticks.run(serve)
    server.close()
    client.connect(path)
    sent = 0

    def send(tick: int) -> None:
        nonlocal sent
        client.send(f"<14>tick {tick}".encode())
        sent += 1
        out.line(tick, sent=sent)

    ticks.run(send)


if __name__ == "__main__":
    main()
