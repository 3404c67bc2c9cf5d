# SPDX-License-Identifier: MIT
"""clocks: a process reading CLOCK_MONOTONIC and CLOCK_BOOTTIME, as every timeout, rate limiter and
event loop does. Once criu has restored it, it lives in a time namespace of its own whose offsets
keep both clocks going on from their values at the dump.

    python clocks.py OUTFILE

Every ~100 ms: ``tick=N role=main pid=P token=T seq=N mono=MS boot=MS`` (milliseconds). A clock
that went back: a FAIL line.
"""

from __future__ import annotations

import sys
import time

import ticks


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: clocks.py OUTFILE")
    out = ticks.Out(sys.argv[1])
    last = (0, 0)

    def step(tick: int) -> None:
        nonlocal last
        now = (time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 10**6,
               time.clock_gettime_ns(time.CLOCK_BOOTTIME) // 10**6)
        if now[0] < last[0] or now[1] < last[1]:
            out.fail(f"a clock went back: {last} -> {now}")
        last = now
        out.line(tick, mono=now[0], boot=now[1])

    ticks.run(step)


if __name__ == "__main__":
    main()
