# SPDX-License-Identifier: MIT
"""seccomp: each thread's filter chain (seccomp.img: filters oldest first, each pointing at the one
before it, a thread's core naming its newest) installed last, after the credentials.

The restorer traces every task with PTRACE_O_SUSPEND_SECCOMP, so the filters, once in, do not get in
the way of the syscalls still injected before the tasks resume.
"""

from __future__ import annotations

import struct

from ..errors import ImageError, SpiceError
from ..images.imagedir import ImageDir
from ..linux.syscalls import NR

TYPE_CHECKING = False  # typing costs ~10 ms of start-up; annotations are strings
if TYPE_CHECKING:
    from .task import TaskCtl

MODE_DISABLED, MODE_STRICT, MODE_FILTER = 0, 1, 2
SECCOMP_SET_MODE_STRICT, SECCOMP_SET_MODE_FILTER = 0, 1
_SOCK_FILTER = 8  # sizeof(struct sock_filter)


def chains(imgdir: ImageDir, cores: dict[int, object]) -> dict[int, list[tuple[bytes, int]]]:
    """tid -> its filters (program, flags), oldest first; a loop or a dangling index is an error."""
    if not any(c.thread_core.HasField("seccomp_mode") and c.thread_core.seccomp_mode for c in cores.values()):
        return {}
    entry = imgdir.one("seccomp.img")
    filters = list(entry.seccomp_filters)
    out: dict[int, list[tuple[bytes, int]]] = {}
    for tid, core in cores.items():
        tc = core.thread_core
        if not tc.HasField("seccomp_mode") or tc.seccomp_mode != MODE_FILTER:
            continue
        chain = []
        i = tc.seccomp_filter
        while True:
            if i >= len(filters) or len(chain) > len(filters):
                raise ImageError(imgdir / "seccomp.img", f"thread {tid}: bad filter chain (index {i})")
            f = filters[i]
            if len(f.filter) % _SOCK_FILTER or not f.filter:
                raise ImageError(imgdir / "seccomp.img", f"filter {i} is not a BPF program")
            chain.append((bytes(f.filter), f.flags if f.HasField("flags") else 0))
            if not f.HasField("prev"):
                break
            i = f.prev
        out[tid] = chain[::-1]
    return out


def install(task: TaskCtl, tid: int, mode: int, chain: list[tuple[bytes, int]]) -> None:
    """Put a thread into its seccomp mode (its chain, oldest filter first)."""
    if mode == MODE_STRICT:
        task.sys(NR.seccomp, SECCOMP_SET_MODE_STRICT, 0, 0, what="seccomp strict", tid=tid)
        return
    b = task.batch()
    for prog, flags in chain:
        code = task.put(prog)
        fprog = task.put(struct.pack("<HxxxxxxQ", len(prog) // _SOCK_FILTER, code))
        b.add(NR.seccomp, SECCOMP_SET_MODE_FILTER, flags, fprog, what="seccomp filter")
    b.run(tid)
    task.reset_scratch()


def mode_of(core) -> int:
    tc = core.thread_core
    return tc.seccomp_mode if tc.HasField("seccomp_mode") else MODE_DISABLED


def check_supported(tid: int, core) -> None:
    if mode_of(core) not in (MODE_DISABLED, MODE_STRICT, MODE_FILTER):
        raise SpiceError("restore", f"thread {tid}: unknown seccomp mode {mode_of(core)}")
