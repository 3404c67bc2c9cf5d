# SPDX-License-Identifier: MIT
"""Interval timers and POSIX timers (tc.timers), with the time they have left.

Mirror of restore/timers.py. /proc/PID/timers names every POSIX timer (id, signal, notification,
clock); the time left and the overrun count are asked inside the task (timer_gettime,
timer_getoverrun), as are the three itimers (getitimer).
"""

from __future__ import annotations

import struct

from ..errors import SpiceError
from ..images.lite import Message
from ..linux.syscalls import NR
from . import proc
from .intask import Batch

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

ITIMER_REAL, ITIMER_VIRTUAL, ITIMER_PROF = 0, 1, 2
SIGEV_SIGNAL, SIGEV_NONE, SIGEV_THREAD, SIGEV_THREAD_ID = 0, 1, 2, 4


def parse_posix_timers(text: str) -> list[dict[str, int]]:
    """/proc/PID/timers -> [{it_id, si_signo, sival_ptr, it_sigev_notify, notify_thread_id?, clock_id}]."""
    out: list[dict[str, int]] = []
    cur: dict[str, int] = {}
    for line in text.splitlines():
        key, _, val = line.partition(":")
        val = val.strip()
        if key == "ID":
            cur = {"it_id": int(val)}
            out.append(cur)
        elif key == "signal":
            signo, _, ptr = val.partition("/")
            cur["si_signo"], cur["sival_ptr"] = int(signo), int(ptr, 16)
        elif key == "notify":
            how, _, who = val.partition("/")
            kind, _, num = who.partition(".")
            if kind == "tid":
                cur["it_sigev_notify"], cur["notify_thread_id"] = SIGEV_THREAD_ID, int(num)
            else:
                cur["it_sigev_notify"] = {"signal": SIGEV_SIGNAL, "thread": SIGEV_THREAD}.get(how, SIGEV_NONE)
        elif key == "ClockID":
            cur["clock_id"] = int(val)
    return out


def ask(b: Batch, pid: int, tc: Message, vpid: Callable[[int], int] = lambda p: p) -> Callable[[], None]:
    """tc.timers: the three itimers (getitimer) and every POSIX timer (timer_gettime,
    timer_getoverrun), as CRIU's parasite reads them. vpid: our tid (/proc) -> the image's."""
    itimers = []
    for which in (ITIMER_REAL, ITIMER_VIRTUAL, ITIMER_PROF):
        buf = b.buffer(32)
        itimers.append((b.call(NR.getitimer, which, buf), buf))
    posix = []
    for t in parse_posix_timers(proc.read_text(f"/proc/{pid}/timers", f"task {pid}")):
        buf = b.buffer(32)
        posix.append((t, b.call(NR.timer_gettime, t["it_id"], buf), b.call(NR.timer_getoverrun, t["it_id"]), buf))

    def answer() -> None:
        timers = tc.timers
        for (i, buf), it in zip(itimers, (timers.real, timers.virt, timers.prof), strict=True):
            b.check(i)
            it.isec, it.iusec, it.vsec, it.vusec = struct.unpack("<qqqq", b.bytes(buf, 32))
        for t, get, over, buf in posix:
            try:
                b.check(get)
                overrun = b.check(over)
            except OSError as e:
                raise SpiceError("dump", f"task {pid}: posix timer {t['it_id']}: {e.strerror}") from None
            isec, insec, vsec, vnsec = struct.unpack("<qqqq", b.bytes(buf, 32))
            p = timers.posix.add(it_id=t["it_id"], clock_id=t.get("clock_id", 0), si_signo=t.get("si_signo", 0),
                                 it_sigev_notify=t.get("it_sigev_notify", SIGEV_NONE),
                                 sival_ptr=t.get("sival_ptr", 0), overrun=overrun,
                                 isec=isec, insec=insec, vsec=vsec, vnsec=vnsec)
            if "notify_thread_id" in t:
                p.notify_thread_id = vpid(t["notify_thread_id"])

    return answer
