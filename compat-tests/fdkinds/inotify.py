# SPDX-License-Identifier: MIT
"""inotify: a process watching files, as `tail -f`, file managers and build watchers do.

    python inotify.py OUTFILE

In its cwd it makes ``watched/`` (a directory) and ``watched.txt``, and two inotify fds:

* ``a`` (non-blocking) watches ``watched/`` for IN_CREATE and ``watched.txt`` for IN_MODIFY;
* ``b`` (blocking) watches the cwd for IN_DELETE_SELF, after adding and removing that watch four
  times, so it is watch 5. It must never report anything: the IN_IGNORED events of those removals
  were read before the dump, and a restore that re-creates the numbering must not leave its own.

Every ~100 ms it reads what ``a`` reports and appends
``tick=N role=main pid=P token=T seq=N created=C modified=M wds=A1,A2/B`` (the watch numbers as the
kernel shows them in /proc/self/fdinfo). An event for a watch it does not know: a FAIL line.
"""

from __future__ import annotations

import ctypes
import os
import select
import struct
import sys

import ticks

IN_MODIFY, IN_CREATE, IN_DELETE_SELF, IN_IGNORED = 0x2, 0x100, 0x400, 0x8000
IN_NONBLOCK, IN_CLOEXEC = os.O_NONBLOCK, os.O_CLOEXEC
libc = ctypes.CDLL(None, use_errno=True)


def check(ret: int, what: str) -> int:
    if ret < 0:
        raise OSError(ctypes.get_errno(), what)
    return ret


def watches(fd: int) -> list[int]:
    with open(f"/proc/self/fdinfo/{fd}") as f:
        return sorted(int(line.split("wd:")[1].split()[0], 16) for line in f if line.startswith("inotify wd:"))


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: inotify.py OUTFILE")
    out = ticks.Out(sys.argv[1])
    os.mkdir("watched")
    with open("watched.txt", "w") as f:
        f.write("start\n")
    a = check(libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC), "inotify_init1")
    wd_dir = check(libc.inotify_add_watch(a, b"watched", IN_CREATE), "watch watched/")
    wd_file = check(libc.inotify_add_watch(a, b"watched.txt", IN_MODIFY), "watch watched.txt")
    b = check(libc.inotify_init1(IN_CLOEXEC), "inotify_init1")
    for _ in range(4):
        check(libc.inotify_rm_watch(b, check(libc.inotify_add_watch(b, b".", IN_DELETE_SELF), "watch .")), "rm")
    check(libc.inotify_add_watch(b, b".", IN_DELETE_SELF), "watch .")
    os.read(b, 65536)  # the four IN_IGNORED
    created = modified = 0

    def step(tick: int) -> None:
        nonlocal created, modified
        try:
            buf = os.read(a, 65536)
        except BlockingIOError:
            buf = b""
        while buf:
            wd, mask, _, n = struct.unpack_from("iIII", buf)
            if wd == wd_dir and mask & IN_CREATE:
                created += 1
            elif wd == wd_file and mask & IN_MODIFY:
                modified += 1
            elif not mask & IN_IGNORED:  # an event for a watch it never made
                out.fail(f"event {mask:#x} for watch {wd} on fd a")
            buf = buf[16 + n:]
        if select.select([b], [], [], 0)[0]:
            wd, mask, _, _ = struct.unpack_from("iIII", os.read(b, 65536))
            out.fail(f"event {mask:#x} for watch {wd} on fd b")
        out.line(tick, created=created, modified=modified,
                 wds=f"{','.join(map(str, watches(a)))}/{','.join(map(str, watches(b)))}")

    ticks.run(step)

if __name__ == "__main__":
    main()
