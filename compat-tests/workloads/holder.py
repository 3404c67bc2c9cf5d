# SPDX-License-Identifier: MIT
"""holder: a Python process holding ~60 MiB of data that must come back intact.

    python3 holder.py OUTFILE

Holds a 40 MiB bytearray of seeded random bytes, a dict of 150k int -> int and a list of 100k
strings. Every ~100 ms it recomputes their checksums from memory, checks them against the values
computed at start (FAIL + exit 1 on a mismatch) and appends
``tick=N role=main pid=P token=T data=C objs=C``.
"""

from __future__ import annotations

import random
import sys
import time
import zlib

from wlproto import Output


def objects_sum(table: dict[int, int], names: list[str]) -> int:
    total = sum(table.values()) + 31 * len(table)
    total += zlib.crc32("\n".join(names).encode())
    return total & 0xFFFFFFFFFFFFFFFF


def main() -> None:
    out = Output(sys.argv[1])
    rnd = random.Random(out.token)
    blob = bytearray(rnd.randbytes(40 << 20))
    table = {i: (i * 2654435761 ^ out.token) & 0xFFFFFFFFFFFF for i in range(150_000)}
    names = [f"item-{i:06d}-{rnd.getrandbits(32):08x}" for i in range(100_000)]
    data0, objs0 = zlib.crc32(blob), objects_sum(table, names)
    tick = 0
    while True:
        tick += 1
        data, objs = zlib.crc32(blob), objects_sum(table, names)
        if data != data0:
            out.fail(f"tick {tick}: bytearray checksum {data:08x}, expected {data0:08x}")
        if objs != objs0:
            out.fail(f"tick {tick}: objects checksum {objs:016x}, expected {objs0:016x}")
        out.line(tick, data=f"{data:08x}", objs=f"{objs:016x}")
        time.sleep(0.1)


if __name__ == "__main__":
    main()
