# SPDX-License-Identifier: MIT
"""POSIX shared memory from shm_open(), as multiprocessing.shared_memory, PostgreSQL and Chromium use
it: files in /dev/shm (tmpfs) whose fds stay open (shm_open opens them O_NOFOLLOW) and mapped.

    python shmopen.py OUTFILE

The process makes two segments named after its token: ``keep`` (still named) and ``gone`` (its
name unlinked at once: only its fd and its mapping hold it, a deleted file a restore must recreate).
A child (role ``child``) opens ``keep`` by name and copies the main process's counter back. Every
~100 ms the main process stores its tick in ``keep``, reads the child's echo of the tick before,
and checks ``gone`` still holds what it wrote (through its mapping and through its fd):
``tick=N role=main pid=P token=T seq=N seg=NAME gone=CRC echo=E``, and the child
``tick=N role=child pid=C token=T seq=N``.
"""

from __future__ import annotations

import mmap
import os
import sys
import zlib

import ticks

GONE = b"a deleted shared memory segment " * 100


def shm_open(name: str, create: bool, size: int = 0) -> tuple[int, mmap.mmap]:
    """glibc's shm_open() (the open(2) it makes in /dev/shm), then a shared mapping of it."""
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_CREAT | os.O_EXCL if create else 0)
    fd = os.open(f"/dev/shm/{name}", flags, 0o600)
    if create:
        os.ftruncate(fd, size)
    return fd, mmap.mmap(fd, os.fstat(fd).st_size)


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: shmopen.py OUTFILE")
    out = ticks.Out(sys.argv[1])
    name = f"spice-shmopen-{out.token:016x}"
    _, keep = shm_open(name, True, 10000)
    gone_fd, gone = shm_open(name + "-gone", True, len(GONE) + 100)
    gone[:len(GONE)] = GONE
    os.unlink(f"/dev/shm/{name}-gone")
    child = os.fork()
    if child == 0:
        mine = ticks.Out(sys.argv[1], "child", out.token)
        _, other = shm_open(name, False)

        def echo(tick: int) -> None:
            other[8:16] = other[0:8]
            mine.line(tick)

        ticks.run(echo)

    def step(tick: int) -> None:
        seen = gone[:len(GONE)]
        if seen != GONE or os.pread(gone_fd, len(GONE), 0) != GONE:
            out.fail("the deleted segment changed")
        echo = int.from_bytes(keep[8:16], "little")
        keep[0:8] = tick.to_bytes(8, "little")
        out.line(tick, seg=name, gone=f"{zlib.crc32(seen):08x}", echo=echo)

    ticks.run(step)


if __name__ == "__main__":
    main()
