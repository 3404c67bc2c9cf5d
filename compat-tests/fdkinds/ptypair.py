# SPDX-License-Identifier: MIT
"""ptypair: pseudo-terminals with both ends in the process tree, as tmux, screen, `script`, sshd,
expect and pexpect hold them.

    python ptypair.py OUTFILE

The process (role ``main``) pty.fork()s a child (role ``child``): a session leader whose
controlling terminal is the pty slave on its stdio (so its process group is the terminal's
foreground group), with ECHO turned off; the child forks a member of its session (role
``member``), which has that controlling terminal too, inherited. The parent keeps the master, gives the terminal a
window size, writes ``ping N`` to it every tick and counts the ``pong`` lines the child answers.
It also holds a second pair from openpty() (both ends, raw mode, no session) with data queued
each way that nobody reads, and a third whose master is in packet mode.

Every ~100 ms: ``tick=N role=main pid=P token=T seq=N child=C pty=K pongs=M qin=A qout=B pkt=1``
(pongs received so far; bytes waiting at the second pair's slave and master) and
``tick=N role=child pid=C token=T seq=N ctty=1 fg=1 echo=0 size=RxC`` and
``tick=N role=member pid=M token=T seq=N mctty=1`` (whether it can open /dev/tty).
"""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import sys
import termios
import tty

import ticks

ROWS, COLS = 33, 111
TIOCINQ = termios.FIONREAD
TIOCGPTN, TIOCPKT, TIOCGPKT = 0x80045430, 0x5420, 0x80045438


def inq(fd: int) -> int:
    return struct.unpack("i", fcntl.ioctl(fd, TIOCINQ, b"\0" * 4))[0]


def member(out: ticks.Out) -> None:
    """Another task of the child's session: it has the terminal as its controlling terminal by
    inheritance only (forked by the leader once the leader had it)."""

    def step(tick: int) -> None:
        try:
            os.close(os.open("/dev/tty", os.O_RDWR))
            ctty = 1
        except OSError:
            ctty = 0
        out.line(tick, mctty=ctty)

    ticks.run(step)


def child(path: str, out: ticks.Out) -> None:
    if os.fork() == 0:
        member(ticks.Out(path, "member", out.token))
    attrs = termios.tcgetattr(0)
    attrs[3] &= ~termios.ECHO
    termios.tcsetattr(0, termios.TCSANOW, attrs)
    buf = b""

    def step(tick: int) -> None:
        nonlocal buf
        while select.select([0], [], [], 0)[0]:
            buf += os.read(0, 4096)
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            if line.startswith(b"ping "):
                os.write(1, b"pong " + line[5:] + b"\n")
        try:
            os.close(os.open("/dev/tty", os.O_RDWR))  # only with a controlling terminal
            ctty = 1
        except OSError:
            ctty = 0
        rows, cols = struct.unpack("4H", fcntl.ioctl(0, termios.TIOCGWINSZ, b"\0" * 8))[:2]
        echo = int(bool(termios.tcgetattr(0)[3] & termios.ECHO))
        out.line(tick, ctty=ctty, fg=int(os.tcgetpgrp(0) == os.getpgrp()), echo=echo, size=f"{rows}x{cols}")

    ticks.run(step)


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: ptypair.py OUTFILE")
    out = ticks.Out(sys.argv[1])
    pid, master = pty.fork()
    if pid == 0:
        child(sys.argv[1], ticks.Out(sys.argv[1], "child", out.token))
    fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("4H", ROWS, COLS, 0, 0))
    index = struct.unpack("I", fcntl.ioctl(master, TIOCGPTN, b"\0" * 4))[0]
    m2, s2 = os.openpty()
    tty.setraw(s2)
    os.write(m2, b"queued-in")  # waits at the slave
    os.write(s2, b"queued-out")  # waits at the master
    m3, s3 = os.openpty()
    fcntl.ioctl(m3, TIOCPKT, struct.pack("i", 1))
    os.set_blocking(master, False)
    got = b""
    pongs = 0

    def step(tick: int) -> None:
        nonlocal got, pongs
        os.write(master, f"ping {tick}\n".encode())
        try:
            while True:
                got += os.read(master, 4096)
        except (BlockingIOError, OSError):
            pass
        while b"\n" in got:
            line, got = got.split(b"\n", 1)
            if line.strip().startswith(b"pong "):
                pongs += 1
        pkt = struct.unpack("i", fcntl.ioctl(m3, TIOCGPKT, b"\0" * 4))[0]
        out.line(tick, child=pid, pty=index, pongs=pongs, qin=inq(s2), qout=inq(m2), pkt=pkt)

    ticks.run(step)


if __name__ == "__main__":
    main()
