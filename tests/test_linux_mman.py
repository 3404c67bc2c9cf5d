# SPDX-License-Identifier: MIT
"""linux.mman.machine_code: C-callable machine code in a read+exec page."""

from __future__ import annotations

import ctypes

from spice_criu.arch import x86
from spice_criu.linux import mman


def _perms(addr: int) -> str:
    with open("/proc/self/maps") as f:
        for line in f:
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            if lo <= addr < hi:
                return line.split()[1]
    return ""


def test_machine_code_runs_and_is_never_writable():
    lea_ret = bytes.fromhex("488d0437c3")  # lea rax, [rdi + rsi]; ret
    add = mman.machine_code(lea_ret, ctypes.c_long, ctypes.c_long, ctypes.c_long)
    assert add(40, 2) == 42 and add(-5, 3) == -2
    assert _perms(ctypes.cast(add, ctypes.c_void_p).value) == "r-xp"


def test_cpuid_through_machine_code():
    """cpuid leaf 0: the highest standard leaf and a 12-byte vendor string (ebx, edx, ecx)."""
    top, ebx, ecx, edx = x86.cpuid(0)
    vendor = b"".join(r.to_bytes(4, "little") for r in (ebx, edx, ecx)).decode()
    with open("/proc/cpuinfo") as f:
        want = next(line.split(":")[1].strip() for line in f if line.startswith("vendor_id"))
    assert vendor == want and top >= 0xD
