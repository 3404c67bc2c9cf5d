# SPDX-License-Identifier: MIT
"""Interval timers (setitimer) and POSIX timers (timer_create with the dumped ids), re-armed with the
time that was left at dump."""

from __future__ import annotations

import struct

from ..errors import SpiceError
from ..linux.syscalls import NR
from .task import TaskCtl

ITIMER_REAL, ITIMER_VIRTUAL, ITIMER_PROF = 0, 1, 2
SIGEV_SIGNAL, SIGEV_NONE, SIGEV_THREAD_ID = 0, 1, 4
_MAX_TIMER_ID_GAP = 4096


def install_itimers(task: TaskCtl) -> None:
    tc = task.plan.tc
    if not tc.HasField("timers"):
        return
    t = tc.timers
    for which, it in ((ITIMER_REAL, t.real), (ITIMER_VIRTUAL, t.virt), (ITIMER_PROF, t.prof)):
        if it.vsec or it.vusec or it.isec or it.iusec:
            # a periodic timer dumped just as it expired shows value 0, which would disarm it
            vusec = it.vusec if it.vsec or it.vusec else 1
            val = struct.pack("<qqqq", it.isec, it.iusec, it.vsec, vusec)
            task.sys(NR.setitimer, which, task.put(val), 0, what=f"setitimer({which})")
    task.reset_scratch()


def install_posix_timers(task: TaskCtl) -> None:
    """timer_create hands out ids in order, so create (and drop) timers until each dumped id comes up."""
    tc = task.plan.tc
    if not tc.HasField("timers") or not tc.timers.posix:
        return
    timers = sorted(tc.timers.posix, key=lambda p: p.it_id)
    idp = task.put(b"\0" * 8)
    spare: list[int] = []
    for pt in timers:
        ev = struct.pack("<QiiI", pt.sival_ptr, pt.si_signo, pt.it_sigev_notify, pt.notify_thread_id or 0)
        evp = task.put(ev.ljust(64, b"\0"))
        for _ in range(_MAX_TIMER_ID_GAP):
            task.sys(NR.timer_create, pt.clock_id, evp, idp, what="timer_create")
            (got,) = struct.unpack("<i", task.remote.read(idp, 4))
            if got == pt.it_id:
                break
            if got > pt.it_id:
                raise SpiceError("restore", f"task {task.pid}: posix timer id {pt.it_id} already in use")
            spare.append(got)
        else:
            raise SpiceError("restore", f"task {task.pid}: cannot recreate posix timer id {pt.it_id}")
        vnsec = pt.vnsec if pt.vsec or pt.vnsec or not (pt.isec or pt.insec) else 1
        its = struct.pack("<qqqq", pt.isec, pt.insec, pt.vsec, vnsec)
        if pt.vsec or vnsec:
            task.sys(NR.timer_settime, pt.it_id, 0, task.put(its), 0, what=f"timer_settime({pt.it_id})")
    for tid in spare:
        task.sys(NR.timer_delete, tid, what="timer_delete")
    task.reset_scratch()
