# SPDX-License-Identifier: MIT
"""tcppair: an established loopback TCP connection between two processes of one tree, with data
always queued in both directions.

    python tcppair.py OUTFILE        (tcppair6.py: the same over IPv6, ::1)

The server (root) listens on 127.0.0.1 (ephemeral port, SO_REUSEADDR, kept open), forks the
client, accepts it, and the two exchange, on every ~100 ms tick:

* a small message client -> server, which the server reads one tick late (so one message is always
  waiting in the server's receive queue: the image's in-queue);
* 8 KiB of a deterministic byte stream server -> client, which the client reads only after a lag of
  six ticks into a 16 KiB receive buffer (so tens of KiB wait in the server's send queue, part of
  them never sent: the image's out-queue and its unsent part).

Both check every byte and message and append
    tick=N role=server|client pid=P token=T conn=C seq=S
where conn names the connection (ports) and seq equals tick. Any mismatch, EOF or reset: a FAIL
line and exit 1. The client dies with its parent.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import signal
import socket
import struct
import sys
import time

TICK = 0.1
FAMILY, HOST = socket.AF_INET, "127.0.0.1"  # tcppair6.py: AF_INET6, "::1"
CHUNK = 8192
LAG = 6


def stream(token: int, n: int) -> bytes:
    """Chunk n of the server's byte stream."""
    seed = hashlib.sha256(struct.pack("<QQ", token, n)).digest()
    return (seed * (CHUNK // len(seed) + 1))[:CHUNK]


class Out:
    def __init__(self, path: str, role: str) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self.role = role

    def line(self, text: str) -> None:
        os.write(self.fd, (text + "\n").encode())

    def fail(self, why: str) -> None:
        self.line(f"FAIL role={self.role} pid={os.getpid()} {why}")
        os._exit(1)


def recv_exact(s: socket.socket, n: int, out: Out, what: str) -> bytes:
    buf = b""
    while len(buf) < n:
        try:
            got = s.recv(n - len(buf))
        except InterruptedError:
            continue
        except OSError as e:
            out.fail(f"{what}: {e}")
        if not got:
            out.fail(f"{what}: EOF after {len(buf)} of {n} bytes")
        buf += got
    return buf


def sleep_tick(start: float, tick: int) -> float:
    """Sleep until tick's slot; returns the (re-based, after a checkpoint gap) start time."""
    delay = start + tick * TICK - time.monotonic()
    if delay < -1.0:  # restored after a pause: pace from now on instead of catching up
        return time.monotonic() - tick * TICK
    if delay > 0:
        time.sleep(delay)
    return start


def server(out_path: str, token: int) -> None:
    out = Out(out_path, "server")
    lst = socket.socket(FAMILY, socket.SOCK_STREAM)
    lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lst.bind((HOST, 0))
    lst.listen(1)
    port = lst.getsockname()[1]
    me = os.getpid()
    if os.fork() == 0:
        client(out_path, token, port, me)
        os._exit(0)
    conn, peer = lst.accept()
    name = f"{port}-{peer[1]}"
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    pending = None
    tick = 0
    start = time.monotonic()
    while True:
        tick += 1
        msg = recv_exact(conn, 16, out, "client message")
        if pending is not None:
            _check_msg(pending, token, tick - 1, out)
        pending = msg
        try:
            conn.sendall(stream(token, tick))
        except OSError as e:
            out.fail(f"tick {tick}: send: {e}")
        out.line(f"tick={tick} role=server pid={me} token={token:016x} conn={name} seq={tick}")
        start = sleep_tick(start, tick)


def _check_msg(msg: bytes, token: int, n: int, out: Out) -> None:
    if msg != struct.pack("<QQ", token, n):
        out.fail(f"message {n} is {msg.hex()}")


def client(out_path: str, token: int, port: int, parent: int) -> None:
    out = Out(out_path, "client")
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(0)
    s = socket.socket(FAMILY, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    s.connect((HOST, port))
    name = f"{port}-{s.getsockname()[1]}"
    me = os.getpid()
    tick = 0
    start = time.monotonic()
    while True:
        tick += 1
        try:
            s.sendall(struct.pack("<QQ", token, tick))
        except OSError as e:
            out.fail(f"tick {tick}: send: {e}")
        if tick > LAG:
            n = tick - LAG
            if recv_exact(s, CHUNK, out, f"stream chunk {n}") != stream(token, n):
                out.fail(f"tick {tick}: stream chunk {n} corrupt")
        out.line(f"tick={tick} role=client pid={me} token={token:016x} conn={name} seq={tick}")
        start = sleep_tick(start, tick)


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: tcppair.py OUTFILE")
    token = int.from_bytes(os.urandom(8), "little") | 1
    server(sys.argv[1], token)


if __name__ == "__main__":
    main()
