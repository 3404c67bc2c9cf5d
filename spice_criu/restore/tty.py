# SPDX-License-Identifier: MIT
"""Terminals (TTY files of files.img + tty-info.img), restored with CRIU 4.2's rules.

* A pty slave whose master is not in the images is the job's terminal outside the dump (a shell
  job). With --shell-job it becomes the restorer's own terminal (its stdin, as CRIU's
  SELF_STDIN), given back the dumped locked termios, termios and window size, and the restored job's
  process group is made the terminal's foreground group (CRIU: "signals on key presses are
  delivered to a group of terminal"). Without --shell-job that is an error, as in CRIU.
* `--inherit-fd fd[N]:tty[RDEV:DEV]` (hex, CRIU's key) hands any such terminal, or an external one
  (dumped with --external tty[...]), a descriptor of the caller's choosing instead.
* Pty pairs whose master is inside the dump, consoles, VTs and serial lines are refused up front.
"""

from __future__ import annotations

import fcntl
import os
import signal
import struct

from ..errors import ImageError, SpiceError
from ..images.imagedir import ImageDir
from ..log import log
from .eventfds import restore_fown
from .files import FileObj, OpenContext, planner, refuse

TYPE_CHECKING = False  # typing costs ~10 ms of start-up; annotations are strings
if TYPE_CHECKING:
    from typing import Any, ClassVar

TCSETS, TIOCSWINSZ, TIOCSPGRP, TIOCSLCKTRMIOS = 0x5402, 0x5414, 0x5410, 0x5457
TTYAUX_MAJOR, PTMX_MINOR = 5, 2
UNIX98_PTY_SLAVE_MAJORS = range(136, 144)
TTY_PTY, TTY_EXT = 1, 5
TTY_TYPES = {0: "UNKNOWN", 1: "PTY", 2: "CONSOLE", 3: "VT", 4: "CTTY", 5: "EXT_TTY", 6: "SERIAL"}
KERNEL_NCCS = 19  # struct termios of the TCGETS/TCSETS ioctls (asm-generic), as CRIU's TERMIOS_NCC


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


def _tty_state(imgdir: ImageDir, state: dict[str, Any]) -> dict[str, Any]:
    """tty-info entries by id, and the pty indexes whose master is in the dump."""
    st = state.get("tty")
    if st is None:
        infos = {i.id: i for i in imgdir.entries("tty-info.img")}
        masters = set()
        for e in imgdir.entries("files.img", optional=False):
            if e.HasField("tty") and e.tty.tty_info_id in infos:
                i = infos[e.tty.tty_info_id]
                if i.type == TTY_PTY and _major(i.rdev) == TTYAUX_MAJOR and i.HasField("pty"):
                    masters.add(i.pty.index)
        regs = {x.id: x.reg for x in imgdir.entries("files.img") if x.HasField("reg")}
        st = state["tty"] = {"infos": infos, "masters": masters, "regs": regs}
    return st


@planner("TTY")
def _plan_tty(e, imgdir: ImageDir, state: dict[str, Any]) -> FileObj:
    t = e.tty
    st = _tty_state(imgdir, state)
    info = st["infos"].get(t.tty_info_id)
    if info is None:
        raise ImageError(imgdir / "tty-info.img", f"no tty-info {t.tty_info_id} for tty file id {t.id}")
    reg = st["regs"].get(t.regf_id) if t.HasField("regf_id") else None
    obj = Tty(t.id, t.flags, info=info, path=reg.name if reg is not None else "", fown=t.fown)
    if info.type == TTY_EXT:
        return obj
    if info.type != TTY_PTY or not info.HasField("pty"):
        return refuse(obj, f"{TTY_TYPES.get(info.type)} terminals")
    major = _major(info.rdev)
    if major == TTYAUX_MAJOR or info.pty.index in st["masters"]:
        return refuse(obj, "pty pairs with the master inside the dump")
    if major not in UNIX98_PTY_SLAVE_MAJORS:
        return refuse(obj, f"tty device {major}:{_minor(info.rdev)}")
    return obj
