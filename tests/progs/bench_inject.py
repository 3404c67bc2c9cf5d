# SPDX-License-Identifier: MIT
"""Measure the low-level layer: us per injected syscall, Remote setup/teardown, freeze/unfreeze, and
process_vm_readv / /proc/PID/mem throughput. Prints one JSON object (for `make bench`) after a
human-readable table.   .venv/bin/python tests/progs/bench_inject.py [--n 5000]"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from progs import Target, seize_stopped  # noqa: E402
from spice_criu.dump.seize import freeze  # noqa: E402
from spice_criu.inject import Remote  # noqa: E402
from spice_criu.linux import procvm  # noqa: E402
from spice_criu.linux import ptrace as pt  # noqa: E402
from spice_criu.linux.syscalls import NR  # noqa: E402

BIG = """
import ctypes, sys, time
n = 64 << 20
buf = (ctypes.c_ubyte * n)()
ctypes.memset(buf, 7, n)
print(ctypes.addressof(buf), flush=True)
time.sleep(600)
"""


def per_call(fn, n: int, reps: int = 5) -> float:
    """Median over reps of the mean us per call."""
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        out.append((time.perf_counter() - t) / n * 1e6)
    return statistics.median(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    n = ap.parse_args().n
    res: dict[str, float] = {}
    with Target.prog("blocker", "sleep", "600000") as t:
        t.wait_for("ready")
        seize_stopped(t.pid)
        with Remote(t.pid) as r:
            res["inject_getpid_us"] = per_call(lambda: r.syscall(NR.getpid), n)
            addr = r.scratch
            res["inject_write_scratch_us"] = per_call(lambda: r.write(addr, b"x" * 64), n)
        with Remote(t.pid, pin_cpu=True) as r:
            res["inject_getpid_pinned_us"] = per_call(lambda: r.syscall(NR.getpid), n)
        res["remote_open_close_us"] = per_call(lambda: Remote(t.pid).close(), 50)
        pt.detach(t.pid)
        res["freeze_unfreeze_1proc_us"] = per_call(lambda: freeze(t.pid).unfreeze(), 50)
    with Target.prog("threads", "16") as t:
        t.wait_for("ready")
        res["freeze_unfreeze_17threads_us"] = per_call(lambda: freeze(t.pid).unfreeze(), 20)
    with Target.python(BIG) as t:
        addr = int(t.wait_for(r"^(\d+)$", timeout=30).group(1))
        buf = bytearray(64 << 20)
        res["process_vm_readv_us_per_mib"] = per_call(lambda: procvm.read_into(t.pid, addr, buf), 3) / 64
        with procvm.ProcMem(t.pid, writable=False) as m:
            res["proc_mem_read_us_per_mib"] = per_call(lambda: m.read(addr, 64 << 20), 3) / 64
        assert buf[:4] == b"\7\7\7\7"
    for k, v in res.items():
        print(f"{k:34s} {v:10.1f}")
    print(json.dumps({k: round(v, 2) for k, v in res.items()}))


if __name__ == "__main__":
    main()
