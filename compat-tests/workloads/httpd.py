# SPDX-License-Identifier: MIT
"""httpd: an http.server on a loopback TCP listening socket.

    python3 httpd.py OUTFILE PORT

Listens on 127.0.0.1:PORT (SO_REUSEADDR, as http.server does). A GET of any path answers
``tick=N pid=P token=T state=C requests=R`` where tick is the step counter, state the checksum of a
1 MiB bytearray recomputed from memory, and requests the number of requests served by this process
(this one included). Between requests, every ~100 ms it checks the state and appends
``tick=N role=main pid=P token=T state=C requests=R``. Single-threaded: the listening socket is the
only socket it holds between requests, so it can be dumped without --tcp-established.
"""

from __future__ import annotations

import os
import random
import sys
import time
import zlib
from http.server import BaseHTTPRequestHandler, HTTPServer

from wlproto import Output


class Server(HTTPServer):
    out: Output
    state: bytearray
    state0: int
    tick = 0
    requests = 0

    def checked_state(self) -> int:
        crc = zlib.crc32(self.state)
        if crc != self.state0:
            self.out.fail(f"tick {self.tick}: state checksum {crc:08x}, expected {self.state0:08x}")
        return crc


class Handler(BaseHTTPRequestHandler):
    server: Server

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        srv = self.server
        srv.requests += 1
        body = (
            f"tick={srv.tick} pid={os.getpid()} token={srv.out.token:016x} "
            f"state={srv.checked_state():08x} requests={srv.requests}\n"
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


def main() -> None:
    out = Output(sys.argv[1])
    srv = Server(("127.0.0.1", int(sys.argv[2])), Handler)
    srv.out = out
    srv.state = bytearray(random.Random(out.token).randbytes(1 << 20))
    srv.state0 = zlib.crc32(srv.state)
    next_tick = time.monotonic()
    while True:
        now = time.monotonic()
        if next_tick - now > 0.2:  # the clock went back (restored after a reboot): do not stall
            next_tick = now
        if now >= next_tick:
            srv.tick += 1
            out.line(srv.tick, state=f"{srv.checked_state():08x}", requests=srv.requests)
            next_tick = now + 0.1
        srv.timeout = max(0.0, next_tick - time.monotonic())
        srv.handle_request()


if __name__ == "__main__":
    main()
