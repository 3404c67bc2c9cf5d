# SPDX-License-Identifier: MIT
"""eventfd, epoll, timerfd and signalfd objects of files.img, restored with CRIU 4.2's semantics.

* eventfd: created with the dumped counter; file flags (O_NONBLOCK...) and owner as dumped.
  (The image has no EFD_SEMAPHORE bit: CRIU never records it, so neither restore can bring it back.)
* signalfd: a signalfd for the dumped 64-bit mask. It reads whichever task reads it, so creating it
  in the restorer is exact.
* epoll: an empty epoll created here; every registration (target fd number, events, data word) is
  added inside the task once its whole fd table exists, since epoll keys items by the owner's fd
  numbers. A registration whose target is not in the task's fd table is an error (CRIU's too).
* timerfd: created for the dumped clock; it is armed at the very end of the restore (CRIU arms it in
  its restorer blob just before the tasks resume) with the dumped remaining time and interval, and
  the unread expiration count is put back with TFD_IOC_SET_TICKS. An absolute (TFD_TIMER_ABSTIME)
  timer's remaining time is rebased on the clock's current value, as CRIU does. One deliberate
  difference: the kernel reports an expired-but-unread *periodic* timer with a remaining time of 0,
  which CRIU re-arms as 0, i.e. disarms for good; here it is re-armed one interval from the resume.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import struct
import time

from ..errors import SpiceError
from ..images.imagedir import ImageDir
from ..linux.syscalls import NR, syscall
from ..record import Factory, Record
from .files import O_CLOEXEC, FileObj, OpenContext, planner, refuse

TYPE_CHECKING = False  # typing costs ~10 ms of start-up; annotations are strings
if TYPE_CHECKING:
    from typing import Any, ClassVar

F_SETSIG, F_SETOWN_EX = 10, 15
#: status flags F_SETFL can change (the rest of a file's flags are fixed at creation)
SETFL_MASK = os.O_APPEND | os.O_NONBLOCK | 0o20000 | 0o40000 | 0o1000000  # + O_ASYNC, O_DIRECT, O_NOATIME
TFD_TIMER_ABSTIME = 1
TFD_IOC_SET_TICKS = 0x40085400  # _IOW('T', 0, u64)
EPOLL_CTL_ADD = 1
NSEC = 1_000_000_000
#: clocks timerfd_create() accepts
TIMERFD_CLOCKS = {0: "CLOCK_REALTIME", 1: "CLOCK_MONOTONIC", 7: "CLOCK_BOOTTIME", 8: "CLOCK_REALTIME_ALARM",
                  9: "CLOCK_BOOTTIME_ALARM"}


def restore_file_params(fd: int, flags: int, fown: Any, what: str) -> None:
    """CRIU's rst_file_params(): the file's owner (F_SETSIG, F_SETOWN_EX as the dumped euid) and its
    status flags."""
    try:
        if fown is not None:
            restore_fown(fd, fown)
        cur = fcntl.fcntl(fd, fcntl.F_GETFL)
        want = (cur & ~SETFL_MASK) | (flags & SETFL_MASK)
        if want != cur:
            fcntl.fcntl(fd, fcntl.F_SETFL, want)
    except OSError as e:
        raise SpiceError("files", f"{what}: restoring file flags/owner: {e.strerror}") from None


def with_file_params(fd: int, flags: int, fown: Any, what: str) -> int:
    """restore_file_params on a freshly made fd, which is closed if that fails; returns the fd."""
    try:
        restore_file_params(fd, flags, fown, what)
    except BaseException:
        os.close(fd)
        raise
    return fd


def restore_fown(fd: int, fown: Any) -> None:
    if fown.signum:
        fcntl.fcntl(fd, F_SETSIG, fown.signum)
    if not fown.pid:
        return
    from .task import PIDS  # the image's owner pid (the tree's) -> ours: F_SETOWN_EX reads it in our namespace

    owner = struct.pack("ii", fown.pid_type, PIDS.host(fown.pid))
    euid = os.geteuid()
    if fown.euid != euid:
        os.setresuid(-1, fown.euid, -1)  # the owner's credentials decide who may be signalled
    try:
        fcntl.fcntl(fd, F_SETOWN_EX, owner)
    finally:
        if fown.euid != euid:
            os.setresuid(-1, euid, -1)


# ---------------------------------------------------------------- eventfd


class EventFd(FileObj):
    counter: int = 0
    fown: Any = None
    kind: ClassVar[str] = "eventfd"

    def describe(self) -> str:
        return f"eventfd (file id {self.id}, counter {self.counter})"

    def open(self, ctx: OpenContext) -> int:
        try:
            fd = os.eventfd(self.counter, os.EFD_CLOEXEC)
        except OSError as e:
            raise SpiceError("files", f"{self.describe()}: {e.strerror}") from None
        restore_file_params(fd, self.flags, self.fown, self.describe())
        return fd


@planner("EVENTFD")
def _plan_eventfd(e, imgdir: ImageDir, state: dict[str, Any]) -> FileObj:
    x = e.efd
    return EventFd(x.id, x.flags, counter=x.counter, fown=x.fown)


# ---------------------------------------------------------------- signalfd


class SignalFd(FileObj):
    sigmask: int = 0
    fown: Any = None
    kind: ClassVar[str] = "signalfd"

    def describe(self) -> str:
        return f"signalfd (file id {self.id}, mask {self.sigmask:#x})"

    def open(self, ctx: OpenContext) -> int:
        mask = ctypes.c_uint64(self.sigmask)
        try:
            fd = syscall(NR.signalfd4, -1, ctypes.addressof(mask), 8, O_CLOEXEC)
        except OSError as e:
            raise SpiceError("files", f"{self.describe()}: {e.strerror}") from None
        restore_file_params(fd, self.flags, self.fown, self.describe())
        return fd


@planner("SIGNALFD")
def _plan_signalfd(e, imgdir: ImageDir, state: dict[str, Any]) -> FileObj:
    x = e.sgfd
    return SignalFd(x.id, x.flags, sigmask=x.sigmask, fown=x.fown)


# ---------------------------------------------------------------- timerfd


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


class TimerFd(FileObj):
    clockid: int = 1
    ticks: int = 0
    settime_flags: int = 0
    value: tuple[int, int] = (0, 0)  # remaining time (sec, nsec)
    interval: tuple[int, int] = (0, 0)
    fown: Any = None
    kind: ClassVar[str] = "timerfd"

    def describe(self) -> str:
        clock = TIMERFD_CLOCKS.get(self.clockid, str(self.clockid))
        return f"timerfd (file id {self.id}, {clock})"

    def open(self, ctx: OpenContext) -> int:
        try:
            fd = syscall(NR.timerfd_create, self.clockid, O_CLOEXEC)
        except OSError as e:
            raise SpiceError("files", f"{self.describe()}: {e.strerror}") from None
        restore_file_params(fd, self.flags, self.fown, self.describe())
        # arm it once every task is complete, right before they resume
        keep = os.dup(fd)
        ctx.when_complete(lambda: self._arm(keep))
        ctx.cleanup.append(lambda: os.close(keep))
        return fd

    def arm_setting(self, now: tuple[int, int] | None = None) -> tuple[int, tuple[int, int], tuple[int, int]]:
        """(settime flags, it_value, it_interval) to arm the timer with; `now` is the clock's
        current time (only needed for absolute timers)."""
        value, interval = self.value, self.interval
        if value == (0, 0) and interval != (0, 0) and self.ticks:
            value = interval  # expired unread periodic timer: next expiry within one interval
        if self.settime_flags & TFD_TIMER_ABSTIME and value != (0, 0):
            assert now is not None
            total = value[0] * NSEC + value[1] + now[0] * NSEC + now[1]
            value = divmod(total, NSEC)
        return self.settime_flags, value, interval

    def _arm(self, fd: int) -> None:
        try:
            now = None
            if self.settime_flags & TFD_TIMER_ABSTIME:
                ns = time.clock_gettime_ns(self.clockid)
                now = divmod(ns, NSEC)
            flags, value, interval = self.arm_setting(now)
            its = _Itimerspec(_Timespec(*interval), _Timespec(*value))
            syscall(NR.timerfd_settime, fd, flags, ctypes.addressof(its), 0)
            if self.ticks:
                ticks = ctypes.c_uint64(self.ticks)
                syscall(NR.ioctl, fd, TFD_IOC_SET_TICKS, ctypes.addressof(ticks))
        except OSError as e:
            raise SpiceError("files", f"{self.describe()}: arming: {e.strerror}") from None


@planner("TIMERFD")
def _plan_timerfd(e, imgdir: ImageDir, state: dict[str, Any]) -> FileObj:
    x = e.tfd
    obj = TimerFd(x.id, x.flags, clockid=x.clockid, ticks=x.ticks, settime_flags=x.settime_flags,
                  value=(x.vsec, x.vnsec), interval=(x.isec, x.insec), fown=x.fown)
    if x.clockid not in TIMERFD_CLOCKS:
        return refuse(obj, f"clock {x.clockid}")
    if x.vnsec >= NSEC or x.insec >= NSEC:
        return refuse(obj, "nanoseconds out of range")
    return obj


# ---------------------------------------------------------------- epoll


class EpollTarget(Record):
    fd: int
    events: int
    data: int


class Epoll(FileObj):
    targets: list[EpollTarget] = Factory(list)
    fown: Any = None
    kind: ClassVar[str] = "epoll"

    def describe(self) -> str:
        return f"epoll (file id {self.id}, {len(self.targets)} targets)"

    def open(self, ctx: OpenContext) -> int:
        try:
            fd = syscall(NR.epoll_create1, O_CLOEXEC)
        except OSError as e:
            raise SpiceError("files", f"{self.describe()}: {e.strerror}") from None
        restore_file_params(fd, self.flags, self.fown, self.describe())
        return fd

    def needs_task_setup(self) -> bool:
        return bool(self.targets)

    def setup_in_task(self, task, fd: int, ctx: OpenContext) -> None:
        """EPOLL_CTL_ADD every target by its fd number in this task (once per epoll file, whichever
        of its holders comes first: the registrations belong to the file, not to the fd)."""
        done: set[int] = ctx.kind_cache("epoll_registered").setdefault("ids", set())
        if self.id in done:
            return
        have = {p.fd for p in task.plan.fds}
        for t in self.targets:
            if t.fd not in have:
                raise SpiceError("files", f"task {task.pid}: {self.describe()} at fd {fd} watches fd {t.fd}, "
                                 "which the task does not have (closed target fds are not supported)")
            ev = task.put(struct.pack("<IQ", t.events, t.data))  # packed struct epoll_event (x86_64)
            task.sys(NR.epoll_ctl, fd, EPOLL_CTL_ADD, t.fd, ev,
                     what=f"epoll_ctl(fd {fd}, ADD fd {t.fd}, events {t.events:#x})")
        task.reset_scratch()
        done.add(self.id)


@planner("EVENTPOLL")
def _plan_epoll(e, imgdir: ImageDir, state: dict[str, Any]) -> FileObj:
    x = e.epfd
    targets = [EpollTarget(t.tfd, t.events, t.data) for t in x.tfd]
    # epoll_ctl(ADD) of one fd twice fails (EEXIST): a target listed twice is a broken image
    fds = [t.fd for t in targets]
    obj = Epoll(x.id, x.flags, targets=targets, fown=x.fown)
    if len(set(fds)) != len(fds):
        return refuse(obj, f"target fds listed twice {sorted(fds)}")
    return obj
