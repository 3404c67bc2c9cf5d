# SPDX-License-Identifier: MIT
"""Signal-driven I/O (O_ASYNC + F_SETOWN/F_SETSIG), as older servers, X clients and some terminal
programs use it: the kernel signals the fd's owner when the fd gets ready.

    python sigio.py OUTFILE

The process blocks the signals it expects and holds:

* a pipe whose read end is O_ASYNC, owned by the process, with F_SETSIG SIGRTMIN+2;
* a unix socket pair whose first end is O_ASYNC, owned by the process group (plain SIGIO);
* a regular file (its own output) owned by the process.

Every ~100 ms it writes a byte into the pipe and into the socket's peer and waits (up to 2 s) for
each signal, then reads the bytes back: ``tick=N role=main pid=P token=T seq=N rt=R io=I
owners=P/-G/P async_=1/1``. A signal that does not come: a FAIL line.
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import struct
import sys

import ticks

F_SETSIG, F_GETSIG, F_GETOWN_EX, F_OWNER_PGRP = 10, 11, 16, 2
RT = signal.SIGRTMIN + 2


def make_async(fd: int, owner: int, sig: int = 0) -> None:
    fcntl.fcntl(fd, fcntl.F_SETOWN, owner)
    if sig:
        fcntl.fcntl(fd, F_SETSIG, sig)
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_ASYNC | os.O_NONBLOCK)


def owner(fd: int) -> str:
    """F_GETOWN_EX (F_GETOWN cannot tell a negative process group from an error): P or -G."""
    kind, pid = struct.unpack("ii", fcntl.fcntl(fd, F_GETOWN_EX, bytes(8)))
    return str(-pid if kind == F_OWNER_PGRP else pid)


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: sigio.py OUTFILE")
    out = ticks.Out(sys.argv[1])
    signal.pthread_sigmask(signal.SIG_BLOCK, {RT, signal.SIGIO})
    r, w = os.pipe()
    make_async(r, os.getpid(), RT)
    a, b = socket.socketpair()
    make_async(a.fileno(), -os.getpgrp())
    fcntl.fcntl(out.fd, fcntl.F_SETOWN, os.getpid())
    fds = (r, a.fileno(), out.fd)
    count = {RT: 0, signal.SIGIO: 0}

    def expect(sig: int, what: str) -> None:
        if signal.sigtimedwait({sig}, 2.0) is None:
            out.fail(f"no {signal.Signals(sig).name if sig == signal.SIGIO else 'SIGRTMIN+2'} for the {what}")
        count[sig] += 1

    def step(tick: int) -> None:
        if fcntl.fcntl(r, F_GETSIG) != RT:
            out.fail(f"the pipe's F_GETSIG is {fcntl.fcntl(r, F_GETSIG)}")
        os.write(w, b"p")
        expect(RT, "pipe")
        os.read(r, 16)
        b.send(b"s")
        expect(signal.SIGIO, "socket")
        a.recv(16)
        owners = "/".join(owner(fd) for fd in fds)
        flags = "/".join(str(int(bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ASYNC))) for fd in fds[:2])
        out.line(tick, rt=count[RT], io=count[signal.SIGIO], owners=owners, async_=flags)

    ticks.run(step)


if __name__ == "__main__":
    main()
