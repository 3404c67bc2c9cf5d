# SPDX-License-Identifier: MIT
"""tcpext: a TCP client whose peer is outside the dumped tree (the test holds the server end).

    python tcpext.py OUTFILE        (the peer's port in ./tcpext.port)

Connects to 127.0.0.1:PORT and, every ~100 ms tick, sends the 16-byte message (token, tick); the
peer answers each with sha256(message)[:16], which the client reads two ticks late (so an answer is
always waiting in its receive queue). Every answer is checked; any mismatch, EOF or error: a FAIL
line and exit 1. Appends ``tick=N role=main pid=P token=T seq=S`` (seq equals tick).
"""

from __future__ import annotations

import hashlib
import os
import socket
import struct
import sys
import time

TICK = 0.1
LAG = 2


def answer(msg: bytes) -> bytes:
    return hashlib.sha256(msg).digest()[:16]


def main() -> None:
    out = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    token = int.from_bytes(os.urandom(8), "little") | 1
    me = os.getpid()

    def fail(why: str) -> None:
        os.write(out, f"FAIL role=main pid={me} {why}\n".encode())
        os._exit(1)

    with open("tcpext.port") as f:
        port = int(f.read())
    s = socket.create_connection(("127.0.0.1", port))
    tick, start = 0, time.monotonic()
    while True:
        tick += 1
        try:
            s.sendall(struct.pack("<QQ", token, tick))
            if tick > LAG:
                got = b""
                while len(got) < 16:
                    part = s.recv(16 - len(got))
                    if not part:
                        fail(f"tick {tick}: EOF from the peer")
                    got += part
                if got != answer(struct.pack("<QQ", token, tick - LAG)):
                    fail(f"tick {tick}: wrong answer {got.hex()}")
        except OSError as e:
            fail(f"tick {tick}: {e}")
        os.write(out, f"tick={tick} role=main pid={me} token={token:016x} seq={tick}\n".encode())
        delay = start + tick * TICK - time.monotonic()
        if delay < -1.0:  # restored after a pause: pace from now on
            start = time.monotonic() - tick * TICK
        elif delay > 0:
            time.sleep(delay)


if __name__ == "__main__":
    main()
