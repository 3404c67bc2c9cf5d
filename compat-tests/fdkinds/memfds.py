# SPDX-License-Identifier: MIT
"""memfds whose size is not a whole number of pages, as sealed buffers passed between processes
(Wayland, systemd's fd store, GLib) are.

    python memfds.py OUTFILE

The process holds:

* ``sealed``: a memfd of 1800 bytes, sealed against shrinking, growing and writing;
* ``shared``: a memfd of two pages and 100 bytes, mapped MAP_SHARED: every tick it stores the tick
  number through the mapping in the last (partial) page and reads it back with pread;
* ``plain``: a memfd of 10 bytes created without MFD_ALLOW_SEALING (its seals read F_SEAL_SEAL).

Every ~100 ms: ``tick=N role=main pid=P token=T seq=N sealed=CRC seals=S sizes=A,B,C stored=N``. A
size, a seal or a byte that changed: a FAIL line.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import sys
import zlib

import ticks

F_GET_SEALS = 1034
F_SEAL_SEAL, F_SEAL_SHRINK, F_SEAL_GROW, F_SEAL_WRITE = 1, 2, 4, 8
SEALED = bytes(range(200)) * 9
SHARED_SIZE = 2 * mmap.PAGESIZE + 100


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: memfds.py OUTFILE")
    out = ticks.Out(sys.argv[1])
    sealed = os.memfd_create("sealed", os.MFD_ALLOW_SEALING)
    os.write(sealed, SEALED)
    fcntl.fcntl(sealed, fcntl.F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE)
    shared = os.memfd_create("shared")
    os.ftruncate(shared, SHARED_SIZE)
    mem = mmap.mmap(shared, SHARED_SIZE)
    plain = os.memfd_create("plain")
    os.write(plain, b"0123456789")
    tail = SHARED_SIZE - 8

    def step(tick: int) -> None:
        if tick > 1 and int.from_bytes(os.pread(shared, 8, tail), "little") != tick - 1:
            out.fail(f"the shared memfd lost its last store: {os.pread(shared, 8, tail).hex()}")
        mem[tail:tail + 8] = tick.to_bytes(8, "little")
        stored = int.from_bytes(os.pread(shared, 8, tail), "little")
        data = os.pread(sealed, 4096, 0)
        if data != SEALED or os.pread(plain, 64, 0) != b"0123456789":
            out.fail(f"memfd contents changed: {len(data)} sealed bytes")
        sizes = ",".join(str(os.fstat(fd).st_size) for fd in (sealed, shared, plain))
        seals = f"{fcntl.fcntl(sealed, F_GET_SEALS)}/{fcntl.fcntl(plain, F_GET_SEALS)}"
        out.line(tick, sealed=f"{zlib.crc32(data):08x}", seals=seals, sizes=sizes, stored=stored)

    ticks.run(step)


if __name__ == "__main__":
    main()
