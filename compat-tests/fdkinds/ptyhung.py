# SPDX-License-Identifier: MIT
"""ptyhung: a pty slave whose master was closed (a hung-up terminal: what a job keeps of a
terminal emulator or tmux pane that went away).

    python ptyhung.py OUTFILE

Every ~100 ms: ``tick=N role=main pid=P token=T seq=N hung=1 pts=/dev/pts/K`` (hung: the terminal
answers its ioctls with EIO; pts: what the fd still names).
"""

from __future__ import annotations

import errno
import fcntl
import os
import sys

import ticks

TIOCGSID = 0x5429


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: ptyhung.py OUTFILE")
    out = ticks.Out(sys.argv[1])
    master, slave = os.openpty()
    os.close(master)

    def step(tick: int) -> None:
        try:
            fcntl.ioctl(slave, TIOCGSID, bytes(4))
            hung = 0
        except OSError as e:
            hung = int(e.errno == errno.EIO)
        out.line(tick, hung=hung, pts=os.readlink(f"/proc/self/fd/{slave}").split()[0])

    ticks.run(step)


if __name__ == "__main__":
    main()
