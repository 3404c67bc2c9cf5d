# SPDX-License-Identifier: MIT
"""netns: a server and its client in a network namespace of their own (as `unshare -n` or a
container without a CNI: loopback only), talking through the loopback.

    python netns.py OUTFILE

The root unshares its net namespace, brings lo up, listens on 127.0.0.1:PORT (a fixed port: the
namespace is its own) and forks the client, which keeps one TCP connection to it (a ping and its
answer every ~100 ms: dumped with --tcp-established) and a unix socketpair (a datagram every tick).
On SIGUSR1 the client opens a new connection to the listener and asks for the server's token
through it (`fresh`). Lines: ``tick=N role=server|client pid=P token=T seq=N port=PORT ...`` with
``pongs`` (client), ``unix`` and ``accepted`` (server), ``fresh`` (client) and ``lo`` (lo is up).
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import select
import signal
import socket
import struct
import sys
import time

CLONE_NEWNET = 0x40000000
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
PORT = 7777
TICK = 0.1


class Out:
    def __init__(self, path: str, role: str, token: int) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self.role, self.token = role, token

    def line(self, tick: int, **fields: object) -> None:
        extra = "".join(f" {k}={v}" for k, v in fields.items())
        os.write(self.fd, f"tick={tick} role={self.role} pid={os.getpid()} token={self.token:016x} "
                          f"seq={tick}{extra}\n".encode())

    def fail(self, why: str) -> None:
        os.write(self.fd, f"FAIL role={self.role} pid={os.getpid()} {why}\n".encode())
        os._exit(1)


def lo_up(set_up: bool = False) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16s24x", b"lo")
        flags = struct.unpack_from("16sH", fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, req))[1]
        if set_up and not flags & IFF_UP:
            fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | IFF_UP))
            flags |= IFF_UP
    return int(bool(flags & IFF_UP))


def ticks(step) -> None:
    start, tick = time.monotonic(), 0
    while True:
        tick += 1
        step(tick)
        delay = start + tick * TICK - time.monotonic()
        if delay < -1.0:
            start = time.monotonic() - tick * TICK
        elif delay > 0:
            time.sleep(delay)


def readline(s: socket.socket) -> bytes:
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = s.recv(256)
        if not chunk:
            raise EOFError("connection closed")
        buf += chunk
    return buf


def client(out: Out, usk: socket.socket) -> None:
    conn = socket.create_connection(("127.0.0.1", PORT), timeout=10)
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    pongs, fresh, want = 0, 0, []
    signal.signal(signal.SIGUSR1, lambda *_: want.append(1))

    def step(tick: int) -> None:
        nonlocal pongs, fresh
        conn.sendall(f"ping {pongs + 1}\n".encode())
        answer = readline(conn).split()
        if answer != [b"pong", str(pongs + 1).encode(), f"{out.token:016x}".encode()]:
            out.fail(f"bad answer {answer}")
        pongs += 1
        usk.send(f"u {tick}".encode())
        if want:
            want.clear()
            with socket.create_connection(("127.0.0.1", PORT), timeout=10) as s:
                s.sendall(b"token\n")
                if readline(s).strip() != f"{out.token:016x}".encode():
                    out.fail("bad token over a fresh connection")
            fresh += 1
        out.line(tick, port=PORT, pongs=pongs, fresh=fresh, lo=lo_up())

    ticks(step)


def server(out: Out, lst: socket.socket, usk: socket.socket) -> None:
    conns: list[socket.socket] = []
    unix, accepted = 0, 0
    usk.setblocking(False)

    def step(tick: int) -> None:
        nonlocal unix, accepted
        while True:
            ready, _, _ = select.select([lst, usk, *conns], [], [], 0)
            if not ready:
                break
            for s in ready:
                if s is lst:
                    c, _ = lst.accept()
                    c.settimeout(10)
                    conns.append(c)
                    accepted += 1
                elif s is usk:
                    while True:
                        try:
                            usk.recv(64)
                        except BlockingIOError:
                            break
                        unix += 1
                else:
                    try:
                        words = readline(s).split()
                    except EOFError:
                        conns.remove(s)
                        s.close()
                        continue
                    if words[:1] == [b"ping"]:
                        s.sendall(b"pong " + words[1] + f" {out.token:016x}\n".encode())
                    elif words == [b"token"]:
                        s.sendall(f"{out.token:016x}\n".encode())
        out.line(tick, port=PORT, unix=unix, accepted=accepted, lo=lo_up())

    ticks(step)


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: netns.py OUTFILE")
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET):
        sys.exit(f"unshare(CLONE_NEWNET): {os.strerror(ctypes.get_errno())}")
    lo_up(set_up=True)
    token = int.from_bytes(os.urandom(8), "little") | 1
    lst = socket.socket()
    lst.bind(("127.0.0.1", PORT))
    lst.listen(8)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    pid = os.fork()
    if pid == 0:
        lst.close()
        a.close()
        client(Out(sys.argv[1], "client", token), b)
    b.close()
    server(Out(sys.argv[1], "server", token), lst, a)


if __name__ == "__main__":
    main()
