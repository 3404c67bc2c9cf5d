# SPDX-License-Identifier: MIT
"""Terminals (TTY files of files.img, tty-info.img, tty-data.img), restored with CRIU 4.2's rules.

* A pty pair with its master in the dump (tmux, screen, `script`, sshd, pty.openpty()) is made
  anew with the same index: /dev/ptmx is opened until the kernel hands out the dumped index (as
  CRIU does; an index taken by someone else is an error naming it), unlocked, given both ends'
  locked termios, termios, window size and packet mode; every slave file of it is opened then,
  the data queued in each end is written into the other, and the master is locked again if it
  was. The session leader whose controlling terminal it was gets it back (TIOCSCTTY in that task)
  right after its setsid(), before its children are forked, so that the whole session has it
  again (CRIU gives it back to the leader alone, later: the others lose it), then the terminal
  gets its foreground group.
* A pty slave whose master is not in the images is the job's terminal outside the dump (a shell
  job). With --shell-job it becomes the restorer's own terminal (its stdin, as CRIU's
  SELF_STDIN), given back the dumped locked termios, termios and window size, and the restored job's
  process group is made the terminal's foreground group (CRIU: "signals on key presses are
  delivered to a group of terminal"). Without --shell-job that is an error, as in CRIU.
* `--inherit-fd fd[N]:tty[RDEV:DEV]` (hex, CRIU's key) hands any such terminal, or an external one
  (dumped with --external tty[...]), a descriptor of the caller's choosing instead.
* A hung-up pty slave (its master was closed) is made again behind a master closed at once, as
  CRIU does. Hung-up masters, consoles, VTs and serial lines are refused up front.
"""

from __future__ import annotations

import fcntl
import os
import signal
import struct

from ..errors import ImageError, SpiceError
from ..images.imagedir import ImageDir
from ..linux.tty import (
    KERNEL_NCCS,
    PTMX_MINOR,
    TCSETS,
    TIOCGPTN,
    TIOCPKT,
    TIOCSCTTY,
    TIOCSLCKTRMIOS,
    TIOCSPGRP,
    TIOCSPTLCK,
    TIOCSWINSZ,
    TTYAUX_MAJOR,
    UNIX98_PTY_MASTER_MAJORS,
    UNIX98_PTY_SLAVE_MAJORS,
)
from ..log import log
from .eventfds import restore_file_params, restore_fown
from .files import _NOT_REPLAYED, O_CLOEXEC, O_NOCTTY, FileObj, OpenContext, planner, pull_fd, refuse

TYPE_CHECKING = False  # typing costs ~10 ms of start-up; annotations are strings
if TYPE_CHECKING:
    from typing import Any, ClassVar

PTMX_TRIES = 32  # CRIU's: opens of /dev/ptmx to reach the dumped index
TTY_PTY, TTY_EXT = 1, 5
TTY_TYPES = {0: "UNKNOWN", 1: "PTY", 2: "CONSOLE", 3: "VT", 4: "CTTY", 5: "EXT_TTY", 6: "SERIAL"}


def _major(dev: int) -> int:
    return ((dev >> 8) & 0xFFF) | ((dev >> 32) & ~0xFFF)


def _minor(dev: int) -> int:
    return (dev & 0xFF) | ((dev >> 12) & ~0xFF)


def tty_key(info: Any) -> str:
    """The --inherit-fd key CRIU gives a terminal."""
    return f"tty[{info.rdev:x}:{info.dev:x}]"


def termios_cc(words) -> bytes:
    """The control characters of a termios_entry: CRIU memcpy()s the c_cc bytes into its repeated
    uint32 field, four to a word (little endian)."""
    raw = struct.pack(f"<{len(words)}I", *words)
    return raw[:KERNEL_NCCS].ljust(KERNEL_NCCS, b"\0")


def _termios(t: Any) -> bytes:
    return struct.pack("<4IB", t.c_iflag, t.c_oflag, t.c_cflag, t.c_lflag, t.c_line) + termios_cc(t.c_cc)


def restore_tty_params(fd: int, info: Any, what: str) -> None:
    """CRIU's restore_tty_params(): locked termios, termios, window size, each if dumped."""
    try:
        if info.HasField("termios_locked"):
            fcntl.ioctl(fd, TIOCSLCKTRMIOS, _termios(info.termios_locked))
        if info.HasField("termios"):
            fcntl.ioctl(fd, TCSETS, _termios(info.termios))
        if info.HasField("winsize"):
            w = info.winsize
            fcntl.ioctl(fd, TIOCSWINSZ, struct.pack("4H", w.ws_row, w.ws_col, w.ws_xpixel, w.ws_ypixel))
    except OSError as e:
        raise SpiceError("tty", f"{what}: restoring terminal settings: {e.strerror}") from None


class Tty(FileObj):
    info: Any = None  # tty_info_entry
    path: str = ""
    fown: Any = None
    kind: ClassVar[str] = "tty"

    def describe(self) -> str:
        return f"{self.path or TTY_TYPES.get(self.info.type, '?')} {tty_key(self.info)} (file id {self.id})"

    def _open_flags(self) -> int:
        # never the restorer's controlling terminal: that is set up in the session leader only
        return (self.flags & ~_NOT_REPLAYED) | O_NOCTTY | O_CLOEXEC

    def _file_params_later(self, ctx: OpenContext, fd: int) -> None:
        """Owner (F_SETOWN may name any task) and status flags (O_ASYNC...), as CRIU's
        rst_file_params, once every task exists: a pair may be made before (a session leader's
        controlling terminal, right after its setsid())."""
        ctx.when_complete(lambda: restore_file_params(fd, self.flags, self.fown, self.describe()))

    def open(self, ctx: OpenContext) -> int:
        key = tty_key(self.info)
        if key in ctx.inherit:
            fd = os.dup(ctx.inherit[key])
            restore_tty_params(fd, self.info, self.describe())
            return fd
        if self.info.type == TTY_EXT:
            raise SpiceError("tty", f"{self.describe()} is external: restore with --inherit-fd fd[N]:{key}")
        if not ctx.option("shell_job"):
            raise SpiceError("tty", f"{self.describe()}: the job's terminal is not in the dump: restore with "
                             f"--shell-job (or --inherit-fd fd[N]:{key})")
        if not os.isatty(0):
            raise SpiceError("tty", f"{self.describe()}: --shell-job needs the restorer's stdin to be a terminal")
        fd = os.dup(0)
        try:
            restore_tty_params(fd, self.info, self.describe())
            if self.fown is not None and self.fown.pid:
                restore_fown(fd, self.fown)
            _foreground(fd, self.describe())
        except BaseException:
            os.close(fd)
            raise
        return fd


def _foreground(fd: int, what: str) -> None:
    """Make the restored job (which joined the restorer's process group) the terminal's foreground
    job; SIGTTOU is blocked meanwhile so a restorer running in the background is not stopped."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTTOU})
    try:
        fcntl.ioctl(fd, TIOCSPGRP, struct.pack("i", os.getpgid(0)))
    except OSError as e:
        log.warn("tty", f"{what}: can't make the restored job the terminal's foreground job: {e.strerror}")
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _is_master(info: Any) -> bool:
    major = _major(info.rdev)
    return (major == TTYAUX_MAJOR and _minor(info.rdev) == PTMX_MINOR) or major in UNIX98_PTY_MASTER_MAJORS


def _tty_state(imgdir: ImageDir, state: dict[str, Any]) -> dict[str, Any]:
    """tty-info entries by id, the pty indexes whose master is in the dump, queued data by tty-info
    id, and the controlling terminals to give back (session leader -> (index, foreground group))."""
    st = state.get("tty")
    if st is None:
        infos = {i.id: i for i in imgdir.entries("tty-info.img")}
        masters = set()
        for e in imgdir.entries("files.img", optional=False):
            if e.HasField("tty") and e.tty.tty_info_id in infos:
                i = infos[e.tty.tty_info_id]
                if i.type == TTY_PTY and _is_master(i) and i.HasField("pty"):
                    masters.add(i.pty.index)
        regs = {x.id: x.reg for x in imgdir.entries("files.img") if x.HasField("reg")}
        data = {d.tty_id: bytes(d.data) for d in imgdir.entries("tty-data.img")}
        st = state["tty"] = {"infos": infos, "masters": masters, "regs": regs, "data": data, "cttys": {}}
    return st


@planner("TTY")
def _plan_tty(e, imgdir: ImageDir, state: dict[str, Any]) -> FileObj:
    t = e.tty
    st = _tty_state(imgdir, state)
    info = st["infos"].get(t.tty_info_id)
    if info is None:
        raise ImageError(imgdir / "tty-info.img", f"no tty-info {t.tty_info_id} for tty file id {t.id}")
    reg = st["regs"].get(t.regf_id) if t.HasField("regf_id") else None
    path = reg.name if reg is not None else ""
    outside = Tty(t.id, t.flags, info=info, path=path, fown=t.fown)  # a terminal whose pair is not in the dump
    if info.type == TTY_EXT:
        return outside
    if info.type != TTY_PTY or not info.HasField("pty"):
        return refuse(outside, f"{TTY_TYPES.get(info.type)} terminals")
    major, index = _major(info.rdev), info.pty.index
    if not _is_master(info) and major not in UNIX98_PTY_SLAVE_MAJORS:
        return refuse(outside, f"tty device {major}:{_minor(info.rdev)}")
    if not info.HasField("termios"):  # its other end was closed before the dump
        if _is_master(info):
            return refuse(outside, "hung-up pty masters")
        return HungSlave(t.id, t.flags, info=info, path=path or _default_path(info), fown=t.fown)
    if index not in st["masters"]:
        return outside  # the job's terminal (a shell job)
    obj = PtyEnd(t.id, t.flags, info=info, path=path or _default_path(info), fown=t.fown)
    if _is_master(info) and info.sid:
        st["cttys"][info.sid] = (index, info.pgrp)
        for kind, hook in (("session_hooks", _take_ctty), ("task_hooks", _give_foreground)):
            hooks = state.setdefault(kind, [])
            if hook not in hooks:
                hooks.append(hook)
    return obj


def check_sessions(state: dict[str, Any], leaders: set[int]) -> None:
    """Up front (build_plan): every pty of the dump that is a session's controlling terminal has
    that session's leader among the tasks (CRIU: "No task found with sid")."""
    for sid, (index, _) in state["tty"]["cttys"].items():
        if sid not in leaders:
            raise SpiceError("tty", f"pty {index} is the controlling terminal of session {sid}: no task found "
                             f"with sid {sid}")


def _default_path(info: Any) -> str:
    """Where CRIU opens an end the image gives no REG entry for (images of old CRIUs)."""
    return "/dev/ptmx" if _is_master(info) else f"/dev/pts/{info.pty.index}"


class PtyEnd(Tty):
    """An end of a pty pair whose master is in the dump: the pair is made anew when the master is
    opened (which opens every slave of it too)."""

    kind: ClassVar[str] = "pty"

    @property
    def master(self) -> bool:
        return _is_master(self.info)

    def open(self, ctx: OpenContext) -> int:
        if self.master:
            return self._open_pair(ctx)
        ctx.fd_of(_master_of(ctx, self.info.pty.index).id)  # opens this slave too
        return ctx.opened[self.id]

    def _open_pair(self, ctx: OpenContext) -> int:
        index = self.info.pty.index
        fd = _open_ptmx(ctx.path(self.path), self._open_flags(), index, self.describe())
        try:
            fcntl.ioctl(fd, TIOCSPTLCK, struct.pack("i", 0))
            restore_tty_params(fd, self.info, self.describe())
            if self.info.packet_mode:
                fcntl.ioctl(fd, TIOCPKT, struct.pack("i", 1))
            self._file_params_later(ctx, fd)
            slaves = [f for f in _files_of(ctx, PtyEnd, index) if not f.master]
            for sl in slaves:
                ctx.opened[sl.id] = sl._open_slave(ctx)
            data = ctx.state["tty"]["data"]
            if slaves:  # what the master had queued comes out of it again
                _requeue(ctx.opened[slaves[0].id], data.get(self.info.id, b""), self.describe())
            _requeue(fd, data.get(self.info.id & ~1, b""), self.describe())  # and what the slave had
            if self.info.locked:
                fcntl.ioctl(fd, TIOCSPTLCK, struct.pack("i", 1))
        except OSError as e:
            os.close(fd)
            raise SpiceError("tty", f"{self.describe()}: setting the pty up: {e.strerror}") from None
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _open_slave(self, ctx: OpenContext) -> int:
        try:
            fd = os.open(ctx.path(self.path), self._open_flags())
        except OSError as e:
            raise SpiceError("tty", f"can't open {self.describe()}: {e.strerror}") from None
        try:
            restore_tty_params(fd, self.info, self.describe())
        except BaseException:
            os.close(fd)
            raise
        self._file_params_later(ctx, fd)
        return fd



class HungSlave(Tty):
    """A pty slave whose master was closed before the dump: made again, as CRIU does, behind a
    master opened for the dumped index and closed at once (with every other file of that slave)."""

    kind: ClassVar[str] = "hung-up pty"

    def open(self, ctx: OpenContext) -> int:
        index = self.info.pty.index
        master = _open_ptmx(ctx.path(_master_path(self.path)), os.O_RDWR | O_NOCTTY | O_CLOEXEC, index,
                            self.describe())
        try:
            fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))
            for f in _files_of(ctx, HungSlave, index):  # every slave file of it (ours last: its fd is returned)
                if f is not self:
                    ctx.opened[f.id] = f._open_slave(ctx)
            return self._open_slave(ctx)
        finally:
            os.close(master)  # which hangs the slaves up again

    def _open_slave(self, ctx: OpenContext) -> int:
        try:
            fd = os.open(ctx.path(self.path), self._open_flags())
        except OSError as e:
            raise SpiceError("tty", f"can't open {self.describe()}: {e.strerror}") from None
        self._file_params_later(ctx, fd)
        return fd


def _master_path(slave_path: str) -> str:
    """The master next to a slave's path, as CRIU inverts it: /dev/pts/N -> /dev/pts/ptmx."""
    return os.path.join(os.path.dirname(slave_path) or "/dev/pts", "ptmx")


def _files_of(ctx: OpenContext, kind: type[Tty], index: int) -> list:
    """The file objects of one kind (PtyEnd, HungSlave) of pty `index`."""
    return [f for f in ctx.files.values() if isinstance(f, kind) and f.info.pty.index == index]


def _master_of(ctx: OpenContext, index: int) -> PtyEnd:
    for f in _files_of(ctx, PtyEnd, index):
        if f.master:
            return f
    raise SpiceError("tty", f"pty {index}: its master is not in the images")


def _open_ptmx(path: str, flags: int, index: int, what: str) -> int:
    """/dev/ptmx opened until the kernel hands out `index` (the lowest free one each time)."""
    spare: list[int] = []
    try:
        for _ in range(PTMX_TRIES):
            try:
                fd = os.open(path, flags)
            except OSError as e:
                raise SpiceError("tty", f"can't open {what}: {e.strerror}") from None
            spare.append(fd)
            try:
                got = struct.unpack("I", fcntl.ioctl(fd, TIOCGPTN, bytes(4)))[0]
            except OSError as e:
                raise SpiceError("tty", f"{what}: can't read the index of a new pty: {e.strerror}") from None
            if got == index:
                spare.pop()
                return fd
            if got > index:
                raise SpiceError("tty", f"{what}: can't get pty index {index} back (/dev/pts/{index} is taken)")
        raise SpiceError("tty", f"{what}: can't get pty index {index} back ({PTMX_TRIES} lower indexes are free: "
                                "criu gives up there too)")
    finally:
        for x in spare:
            os.close(x)


def _requeue(fd: int, data: bytes, what: str) -> None:
    """Queued data goes back in; a terminal never guaranteed delivery, so a short write is logged
    (as CRIU does), not fatal."""
    if not data:
        return
    try:
        n = os.write(fd, data)
    except OSError as e:
        n, why = 0, e.strerror
    else:
        why = "short write"
    if n != len(data):
        log.warn("tty", f"{what}: restored {n} of {len(data)} queued bytes ({why})")


def _take_ctty(task, ctx: OpenContext) -> None:
    """A session hook (right after the leader's setsid(), before its children are forked, which
    inherit it): a session leader whose controlling terminal was a pty of the dump gets it back.
    CRIU gives it back later, to the leader alone: the session's other tasks lose it there."""
    want = ctx.state["tty"]["cttys"].get(task.plan.pid)  # (by the images' pid: the session's)
    if want is None:
        return
    slave = _slave_ioctl(task, ctx, want[0], TIOCSCTTY, 1)
    log.debug(f"task {task.pid}: controlling terminal {slave}")


def _give_foreground(task, ctx: OpenContext) -> None:
    """A task hook (after the leader's fds, when every process group exists): the terminal's
    dumped foreground group."""
    want = ctx.state["tty"]["cttys"].get(task.plan.pid)  # (by the images' pid: the session's)
    if want is None or not want[1] or want[1] == task.plan.pgid:  # TIOCSCTTY made the leader's group it
        return
    slave = _slave_ioctl(task, ctx, want[0], TIOCSPGRP, struct.pack("i", want[1]))
    log.debug(f"task {task.pid}: foreground group {want[1]} on {slave}")


def _slave_ioctl(task, ctx: OpenContext, index: int, req: int, arg: int | bytes) -> str:
    """ioctl(req, arg) in the task on a slave of pty `index` opened for it (the pair made first),
    then closed; bytes are passed by address. Returns the slave's path."""
    from ..linux.syscalls import NR

    master = _master_of(ctx, index)
    ctx.fd_of(master.id)
    slave = _slave_path(master.path, index)
    try:
        ours = os.open(ctx.path(slave), os.O_RDONLY | O_NOCTTY | O_CLOEXEC)
    except OSError as e:
        raise SpiceError("tty", f"task {task.pid}: can't open {slave}, its controlling terminal: "
                         f"{e.strerror}") from None
    try:
        fd = pull_fd(task, ours)
    finally:
        os.close(ours)
    b = task.batch()
    b.add(NR.ioctl, fd, req, task.put(arg) if isinstance(arg, bytes) else arg, what=f"ioctl({req:#x}, {slave})")
    b.add(NR.close, fd, what="close")
    b.run()
    task.reset_scratch()
    return slave


def _slave_path(master_path: str, index: int) -> str:
    """The slave next to a master's path, as CRIU inverts it: /dev/ptmx -> /dev/pts/N,
    /dev/pts/ptmx -> /dev/pts/N."""
    d = os.path.dirname(master_path) or "/dev"
    return f"{d}/{index}" if d.endswith("pts") else f"{d}/pts/{index}"
