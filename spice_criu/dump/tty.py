# SPDX-License-Identifier: MIT
"""Terminals: the pty slave a shell job runs on (--shell-job), as CRIU 4.2 records it.

Mirror of restore/tty.py. A TTY entry (with a REG entry for its /dev/pts/N path) and, once per
terminal, a tty-info entry: termios, locked termios and window size (read with the TCGETS,
TIOCGLCKTRMIOS and TIOCGWINSZ ioctls; control characters packed four to a uint32 word as CRIU's
memcpy leaves them), the pty index, device numbers, owner, and the session and foreground group
when the terminal is the task's controlling terminal. A terminal whose session is outside the dumped
tree needs --shell-job (CRIU: "Task attached to shell terminal"). Pty masters, consoles, VTs and
serial lines are refused.
"""

from __future__ import annotations

import fcntl
import os
import struct

from ..errors import SpiceError
from ..images import codec
from . import proc
from .files import OpenFd, RegParams, add_file, dumper, fown, reg_entry

TCGETS, TIOCGWINSZ, TIOCGLCKTRMIOS, TIOCGEXCL = 0x5401, 0x5413, 0x5456, 0x80045440
UNIX98_PTY_SLAVE_MAJORS = range(136, 144)
TTY_PTY = 1
KERNEL_NCCS = 19


def _termios(fd: int, req: int, msg) -> None:
    raw = fcntl.ioctl(fd, req, bytes(36))
    msg.c_iflag, msg.c_oflag, msg.c_cflag, msg.c_lflag, msg.c_line = struct.unpack_from("<4IB", raw)
    cc = raw[17:36].ljust(4 * KERNEL_NCCS, b"\0")
    msg.c_cc.extend(struct.unpack(f"<{KERNEL_NCCS}I", cc))
    msg.c_ispeed = msg.c_ospeed = 0


@dumper("tty")
def _dump_tty(of: OpenFd, fid: int) -> str:
    rdev = of.st.st_rdev
    major, minor = os.major(rdev), os.minor(rdev)
    if major not in UNIX98_PTY_SLAVE_MAJORS:
        raise SpiceError("dump", f"{of.describe()}: tty device {major}:{minor} (only pty slaves are supported)")
    index = (major - UNIX98_PTY_SLAVE_MAJORS.start) * 256 + minor
    info_id = index << 1  # CRIU's tty_gen_id: index, low bit set for masters
    ctx = of.ctx
    done: set[int] = ctx.__dict__.setdefault("_tty_infos", set())  # tty-info ids written in this dump
    stat = proc.stat(of.pid)
    is_ctty = stat_tty_nr(of.pid) == _new_encode(rdev)
    sid = stat.sid if is_ctty else 0
    if sid and not ctx.opts.shell_job and sid not in _tree_pids(of):
        raise SpiceError("dump", f"{of.describe()}: found dangling tty with sid {sid}: the task is attached to "
                         "a shell terminal. Consider using --shell-job option")
    if info_id not in done:
        done.add(info_id)
        ti = codec.pb("tty_info_entry", lite=True)(id=info_id, type=TTY_PTY, locked=False, packet_mode=False, sid=sid,
                                        pgrp=stat_tpgid(of.pid) if is_ctty else 0, rdev=rdev & 0xFFFFFFFF,
                                        dev=of.st.st_dev & 0xFFFFFFFF, uid=of.st.st_uid, gid=of.st.st_gid)
        try:
            ti.exclusive = bool(struct.unpack("i", fcntl.ioctl(of.lfd, TIOCGEXCL, bytes(4)))[0])
            _termios(of.lfd, TCGETS, ti.termios)
            _termios(of.lfd, TIOCGLCKTRMIOS, ti.termios_locked)
            w = struct.unpack("4H", fcntl.ioctl(of.lfd, TIOCGWINSZ, bytes(8)))
        except OSError as e:
            raise SpiceError("dump", f"{of.describe()}: reading the terminal's settings: {e.strerror}") from None
        ti.winsize.ws_row, ti.winsize.ws_col, ti.winsize.ws_xpixel, ti.winsize.ws_ypixel = w
        ti.pty.index = index
        ctx.images.add("tty-info.img", "TTY_INFO", ti)
    regf = ctx.files.new()
    reg_entry(ctx, regf, of.lfd, of.link, of.st, RegParams(of.flags, 0, fown(of.lfd)), of.describe())
    te = codec.pb("tty_file_entry", lite=True)(id=fid, tty_info_id=info_id, flags=of.flags, regf_id=regf)
    for k, v in fown(of.lfd).items():
        setattr(te.fown, k, v)
    add_file(ctx, "TTY", fid, "tty", te)
    return "TTY"


def _new_encode(dev: int) -> int:
    """The kernel's new_encode_dev(), as /proc/PID/stat shows tty_nr."""
    major, minor = os.major(dev), os.minor(dev)
    return (minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12)


def _stat_fields(pid: int) -> list[str]:
    text = proc.read_text(f"/proc/{pid}/stat", f"task {pid}")
    return text[text.rindex(")") + 2 :].split()


def stat_tty_nr(pid: int) -> int:
    return int(_stat_fields(pid)[4])  # field 7


def stat_tpgid(pid: int) -> int:
    return max(0, int(_stat_fields(pid)[5]))  # field 8


def _tree_pids(of: OpenFd) -> set[int]:
    pids = set()
    todo = [of.ctx.opts.tree or of.pid]
    while todo:
        p = todo.pop()
        pids.add(p)
        try:
            for t in os.listdir(f"/proc/{p}/task"):
                kids = proc.read_text(f"/proc/{p}/task/{t}/children", f"task {p}").split()
                todo.extend(int(k) for k in kids if int(k) not in pids)
        except (OSError, ProcessLookupError):
            continue
    return pids
