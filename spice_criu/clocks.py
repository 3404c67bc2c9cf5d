# SPDX-License-Identifier: MIT
"""Time namespace offsets, which dump (the clocks a tree sees) and restore (the offsets of the
namespace it makes) both read."""

from __future__ import annotations

import os
import time

#: the clocks a time namespace offsets: (timens_entry field and offsets-file name, clock id)
CLOCKS = (("monotonic", time.CLOCK_MONOTONIC), ("boottime", time.CLOCK_BOOTTIME))


def timens_offsets(pid: int | str = "self") -> dict[str, int]:
    """The clock offsets (ns) of the time namespace pid's children get (for a task that never
    unshared one: its own), by name: /proc/PID/timens_offsets lines "monotonic S N". No offsets on a
    kernel without time namespaces."""
    offsets = {}
    try:
        with open(f"/proc/{pid}/timens_offsets") as f:
            for line in f:
                name, sec, nsec = line.split()
                offsets[name] = int(sec) * 10**9 + int(nsec)
    except FileNotFoundError:
        if os.path.exists("/proc/self/timens_offsets"):
            raise  # the task is gone
    return offsets
