# SPDX-License-Identifier: MIT
"""ttyjob: a foreground job of a terminal (its stdio is the pty slave of a shell session).

    python ttyjob.py OUTFILE

It turns the terminal's ECHO off, then every ~100 ms checks that it still owns the terminal (its
process group is the terminal's foreground group), that ECHO is still off and that its stdin is
still the same terminal, answers every "ping N" line read from the terminal with "pong N TOKEN"
written to the terminal, and appends
    tick=N role=main pid=P token=T tty=/dev/pts/K echo=E
to OUTFILE (E = pings answered). Any mismatch: a FAIL line and exit 1.
"""

from __future__ import annotations

import os
import select
import sys
import termios
import time


def main() -> None:
    out = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    pid = os.getpid()

    def fail(why: str) -> None:
        os.write(out, f"FAIL role=main pid={pid} {why}\n".encode())
        os._exit(1)

    token = os.urandom(8).hex()
    tty = os.ttyname(0)
    attrs = termios.tcgetattr(0)
    attrs[3] &= ~termios.ECHO
    termios.tcsetattr(0, termios.TCSANOW, attrs)
    os.set_blocking(0, False)
    buf = b""
    tick = echo = 0
    next_at = time.monotonic()
    while True:
        timeout = max(0.0, next_at - time.monotonic())
        try:
            ready, _, _ = select.select([0], [], [], timeout)
        except InterruptedError:
            continue
        if ready:
            try:
                buf += os.read(0, 4096)
            except BlockingIOError:
                pass
            except OSError as e:
                fail(f"read from the terminal: {e}")
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                words = line.split()
                if len(words) == 2 and words[0] == b"ping":
                    os.write(1, b"pong " + words[1] + b" " + token.encode() + b"\n")
                    echo += 1
        if time.monotonic() < next_at:
            continue
        next_at = max(next_at + 0.1, time.monotonic() - 1.0)
        tick += 1
        if os.tcgetpgrp(0) != os.getpgrp():
            fail(f"tick {tick}: not the terminal's foreground job (fg {os.tcgetpgrp(0)}, us {os.getpgrp()})")
        if termios.tcgetattr(0)[3] & termios.ECHO:
            fail(f"tick {tick}: terminal ECHO is back on")
        if os.ttyname(0) != tty:
            fail(f"tick {tick}: stdin is {os.ttyname(0)}, was {tty}")
        os.write(out, f"tick={tick} role=main pid={pid} token={token} tty={tty} echo={echo}\n".encode())


if __name__ == "__main__":
    main()
