# SPDX-License-Identifier: MIT
"""unixnames: unix sockets bound to names in the filesystem, as servers hold them.

    python unixnames.py OUTFILE

In its cwd (the run dir) the process binds:

* ``srv.sock`` by absolute path, listening, its file chmod 0640: every tick it accepts whatever
  connected and answers ``token=T tick=N``;
* ``rel.sock`` by a relative name, a datagram socket: every tick it reads whatever was sent to it
  and reports the count (``dgrams``);
* ``gone.sock``, bound and then unlinked (a socket whose file was deleted).

Every ~100 ms it appends ``tick=N role=main pid=P token=T seq=N dgrams=D``.
"""

from __future__ import annotations

import os
import socket
import sys

import ticks


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: unixnames.py OUTFILE")
    out = ticks.Out(sys.argv[1])
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(os.path.abspath("srv.sock"))
    os.chmod("srv.sock", 0o640)
    srv.listen(8)
    srv.setblocking(False)
    rel = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    rel.bind("rel.sock")
    rel.setblocking(False)
    gone = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    gone.bind("gone.sock")
    os.unlink("gone.sock")
    dgrams = 0

    def step(tick: int) -> None:
        nonlocal dgrams
        while True:
            try:
                conn, _ = srv.accept()
            except BlockingIOError:
                break
            conn.setblocking(True)
            conn.sendall(f"token={out.token:016x} tick={tick}\n".encode())
            conn.close()
        while True:
            try:
                rel.recv(256)
            except BlockingIOError:
                break
            dgrams += 1
        out.line(tick, dgrams=dgrams)

    ticks.run(step)


if __name__ == "__main__":
    main()
