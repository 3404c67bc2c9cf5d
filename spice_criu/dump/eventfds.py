# SPDX-License-Identifier: MIT
"""eventfd, epoll, timerfd and signalfd: their state as /proc/PID/fdinfo shows it, as CRIU 4.2 dumps it.

Mirror of restore/eventfds.py. Each is one files.img entry (EVENTFD / EVENTPOLL / TIMERFD /
SIGNALFD) with the description's flags and owner:
* eventfd: the counter. An EFD_SEMAPHORE eventfd is refused: the image has no field for it, so
  CRIU silently restores it as a plain counter.
* epoll: every registration (target fd, events, data, and the target's dev/inode/pos that CRIU
  records). Each target is verified with kcmp(KCMP_EPOLL_TFD) to be the file the task has at that
  fd number; if the fd was closed or reused, another fd of the task holding the same file is used
  (as CRIU does); a registration whose file the task no longer holds at all is refused.
* timerfd: clock, remaining time (it_value), interval, unread expirations (ticks), settime flags. A
  periodic timer that expired while the tree was frozen shows no remaining time; it is recorded as
  due one interval later (CRIU records 0, which any restore turns into a dead timer).
* signalfd: the signal mask.
"""

from __future__ import annotations

import re

from ..errors import SpiceError
from ..images import codec
from ..linux import kcmp
from . import proc
from .files import OpenFd, add_file, dumper, fown

_TFD = re.compile(r"tfd:\s*(\d+)\s+events:\s*([0-9a-f]+)\s+data:\s*([0-9a-f]+)\s+pos:\s*(\d+)\s+ino:\s*([0-9a-f]+)"
                  r"\s+sdev:\s*([0-9a-f]+)")
_PAIR = re.compile(r"\((\d+),\s*(\d+)\)")


def _fdinfo_text(of: OpenFd) -> str:
    return proc.read_text(f"/proc/{of.pid}/fdinfo/{of.fd}", of.describe())


def _field(of: OpenFd, key: str) -> str:
    v = of.info.extra.get(key)
    if v is None:
        raise SpiceError("dump", f"{of.describe()}: no '{key}' in its fdinfo")
    return v


def _owner(msg, of: OpenFd) -> None:
    for k, v in fown(of.lfd).items():
        setattr(msg.fown, k, v)


@dumper("eventfd")
def _dump_eventfd(of: OpenFd, fid: int) -> str:
    if of.info.extra.get("eventfd-semaphore", "0").strip() not in ("", "0"):
        raise SpiceError("dump", f"{of.describe()}: an EFD_SEMAPHORE eventfd: CRIU's image cannot record "
                         "semaphore mode: not supported")
    e = codec.pb("eventfd_file_entry", lite=True)(id=fid, flags=of.flags, counter=int(_field(of, "eventfd-count"), 16))
    _owner(e, of)
    add_file(of.ctx, "EVENTFD", fid, "efd", e)
    return "EVENTFD"


@dumper("signalfd")
def _dump_signalfd(of: OpenFd, fid: int) -> str:
    e = codec.pb("signalfd_entry", lite=True)(id=fid, flags=of.flags, sigmask=int(_field(of, "sigmask"), 16))
    _owner(e, of)
    add_file(of.ctx, "SIGNALFD", fid, "sgfd", e)
    return "SIGNALFD"


@dumper("timerfd")
def _dump_timerfd(of: OpenFd, fid: int) -> str:
    value = _PAIR.search(_field(of, "it_value"))
    interval = _PAIR.search(_field(of, "it_interval"))
    if value is None or interval is None:
        raise SpiceError("dump", f"{of.describe()}: unreadable timer in its fdinfo")
    vsec, vnsec, isec, insec = int(value[1]), int(value[2]), int(interval[1]), int(interval[2])
    ticks = int(_field(of, "ticks"))
    if (vsec, vnsec) == (0, 0) and (isec, insec) != (0, 0) and ticks:
        # expired while frozen and not read yet: the kernel shows no remaining time, which both
        # restorers would take as "disarmed" and the periodic timer would never fire again. Its
        # next expiry is less than one interval away: record one interval.
        vsec, vnsec = isec, insec
    e = codec.pb("timerfd_entry", lite=True)(
        id=fid, flags=of.flags, clockid=int(_field(of, "clockid")), ticks=ticks,
        settime_flags=int(_field(of, "settime flags"), 8), vsec=vsec, vnsec=vnsec, isec=isec, insec=insec,
    )
    _owner(e, of)
    add_file(of.ctx, "TIMERFD", fid, "tfd", e)
    return "TIMERFD"


@dumper("eventpoll")
def _dump_epoll(of: OpenFd, fid: int) -> str:
    e = codec.pb("eventpoll_file_entry", lite=True)(id=fid, flags=of.flags)
    _owner(e, of)
    seen: dict[int, int] = {}  # tfd number -> registrations met with it (the kernel's toff)
    for m in _TFD.finditer(_fdinfo_text(of)):
        tfd, events, data = int(m[1]), int(m[2], 16), int(m[3], 16)
        pos, ino, dev = int(m[4]), int(m[5], 16), int(m[6], 16)
        toff = seen.get(tfd, 0)
        seen[tfd] = toff + 1
        fd = _target_fd(of, tfd, toff, dev, ino)
        e.tfd.add(id=0, tfd=fd, events=events, data=data, dev=dev, inode=ino, pos=pos)
    add_file(of.ctx, "EVENTPOLL", fid, "epfd", e)
    return "EVENTPOLL"


def _target_fd(of: OpenFd, tfd: int, toff: int, dev: int, ino: int) -> int:
    """The fd of the task that holds the file registered under (tfd, toff) in this epoll."""
    candidates = [tfd] + [fd for fd in proc.fds(of.pid) if fd != tfd]
    for fd in candidates:
        try:
            if kcmp.same_epoll_target(of.pid, fd, of.pid, of.fd, tfd, toff):
                return fd
        except OSError:
            continue
    raise SpiceError("dump", f"{of.describe()}: it watches a file (fd {tfd} when added, dev {dev:#x} inode {ino}) "
                     "the task no longer has open: epoll with closed target fds is not supported")
