# SPDX-License-Identifier: MIT
"""An O_TMPFILE file: an unnamed file in a directory, as journald, databases and editors make
scratch files that vanish with them.

    python tmpfiles.py OUTFILE

It opens O_TMPFILE | O_RDWR in its cwd, writes a known block and keeps writing one line per tick
at its position. Every ~100 ms: ``tick=N role=main pid=P token=T seq=N head=CRC links=0 pos=P``
(the file still has no name: links=0; pos goes on by one line per tick). A changed block: FAIL.
"""

from __future__ import annotations

import os
import sys
import zlib

import ticks

HEAD = b"an unnamed O_TMPFILE file " * 200
LINE = b"x" * 15 + b"\n"


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: tmpfiles.py OUTFILE")
    out = ticks.Out(sys.argv[1])
    fd = os.open(".", os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
    os.write(fd, HEAD)

    def step(tick: int) -> None:
        head = os.pread(fd, len(HEAD), 0)
        if head != HEAD:
            out.fail("the O_TMPFILE file changed")
        os.write(fd, LINE)
        pos = (os.lseek(fd, 0, os.SEEK_CUR) - len(HEAD)) // len(LINE)
        out.line(tick, head=f"{zlib.crc32(head):08x}", links=os.fstat(fd).st_nlink, pos=pos)

    ticks.run(step)


if __name__ == "__main__":
    main()
