# SPDX-License-Identifier: MIT
"""shmghost: two processes sharing memory through a deleted file that only their mappings keep, as
POSIX semaphores and multiprocessing's locks do (/dev/shm/sem.* mapped, then unlinked).

    python shmghost.py OUTFILE

The parent creates two files in its cwd, maps them, closes and unlinks them (no fd is left: the
VMAs alone hold them, CRIU dumps them as ghost files), and forks the child:

* ``shared`` (MAP_SHARED, one page, both processes): each process writes its tick at its own
  offset every tick and reads the other's. If what it reads stops moving for STALL ticks, the two
  mappings are no longer the same file: a FAIL line.
* ``private`` (MAP_PRIVATE, two pages, parent only): page 0 written after mapping (a private copy),
  page 1 left as the file's; ``priv`` is the checksum of both, constant across a dump.

The child also works in a directory it removed (``cwd``: its /proc/self/cwd link, "... (deleted)").

Every ~100 ms each role appends ``tick=N role=parent|child pid=P token=T seq=N`` and ``priv=C``
(the parent) or ``cwd=PATH`` (the child). The child dies with its parent.
"""

from __future__ import annotations

import ctypes
import hashlib
import mmap
import os
import signal
import struct
import sys

import ticks

STALL = 20  # ticks without news from the other process: the mapping is not shared any more
PAGE = mmap.PAGESIZE


def ghost_map(name: str, size: int, flags: int, content: bytes) -> mmap.mmap:
    """Map a new file of `size` bytes holding `content`, then close and unlink it."""
    fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    os.write(fd, content.ljust(size, b"\0"))
    m = mmap.mmap(fd, size, flags=flags)
    os.close(fd)
    os.unlink(name)
    return m


def run(out: ticks.Out, shared: mmap.mmap, mine: int, theirs: int, extra=lambda tick: {}) -> None:
    seen, since = -1, 0

    def step(tick: int) -> None:
        nonlocal seen, since
        shared[mine:mine + 8] = struct.pack("<Q", tick)
        other = struct.unpack("<Q", shared[theirs:theirs + 8])[0]
        if other != seen:
            seen, since = other, tick
        elif tick - since > STALL:
            out.fail(f"tick {tick}: the other process wrote nothing for {STALL} ticks (value {other}): "
                     "the shared mapping is not shared")
        out.line(tick, **extra(tick))

    ticks.run(step)


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: shmghost.py OUTFILE")
    token = int.from_bytes(os.urandom(8), "little") | 1
    tag = f"{os.getpid()}-{token:x}"
    shared = ghost_map(f"shmghost-shared-{tag}", PAGE, mmap.MAP_SHARED, b"")
    seed = hashlib.sha256(struct.pack("<Q", token)).digest()
    private = ghost_map(f"shmghost-private-{tag}", 2 * PAGE, mmap.MAP_PRIVATE, seed * (2 * PAGE // len(seed)))
    private[0:len(seed)] = seed[::-1]  # page 0 becomes the process's own copy
    priv = hashlib.sha256(private[:]).hexdigest()[:16]
    parent = os.getpid()
    if os.fork() == 0:
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:
            os._exit(0)
        os.mkdir(f"shmghost-cwd-{tag}")
        os.chdir(f"shmghost-cwd-{tag}")
        os.rmdir(os.getcwd())
        run(ticks.Out(sys.argv[1], "child", token), shared, 8, 0,
            lambda tick: {"cwd": os.readlink("/proc/self/cwd").replace(" ", "_")})
    out = ticks.Out(sys.argv[1], "parent", token)

    def check_private(tick: int) -> dict:
        now = hashlib.sha256(private[:]).hexdigest()[:16]
        if now != priv:
            out.fail(f"tick {tick}: the private mapping changed ({now}, was {priv})")
        return {"priv": now}

    run(out, shared, 0, 8, check_private)


if __name__ == "__main__":
    main()
