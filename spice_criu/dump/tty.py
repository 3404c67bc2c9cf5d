# SPDX-License-Identifier: MIT
"""Terminals: Unix98 pseudo-terminals, both ends, as CRIU 4.2 records them.

Mirror of restore/tty.py. Each fd gets a TTY entry (with a REG entry for its /dev/ptmx or
/dev/pts/N path) and, once per end of each terminal, a tty-info entry: termios, locked termios and
window size (TCGETS, TIOCGLCKTRMIOS, TIOCGWINSZ; control characters packed four to a uint32 word as
CRIU's memcpy leaves them), the pty index, device numbers, owner, packet mode, lock and exclusive
state, and the session and foreground group the end reports: a master reports its slave's, a
slave only the task's own controlling terminal's (the ioctls answer per calling task, which is why
a slave's are read from /proc/PID/stat). tty-info ids are CRIU's: index * 2, plus 1 for a master.

Pairs with both ends in the dump also get what is queued in them (tty-data.img), read at the end
of the dump as CRIU does; it is written back into the other end when the tree goes on running (a
failed dump, --leave-running, --leave-stopped). A slave whose session is outside the dumped tree
needs --shell-job (CRIU: "Task attached to shell terminal"). Consoles, VTs and serial lines are
refused.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct

from ..errors import SpiceError
from ..images import codec
from ..linux.tty import (
    KERNEL_NCCS,
    PTMX_MINOR,
    TCGETS,
    TIOCGEXCL,
    TIOCGLCKTRMIOS,
    TIOCGPGRP,
    TIOCGPKT,
    TIOCGPTLCK,
    TIOCGPTN,
    TIOCGSID,
    TIOCGWINSZ,
    TTYAUX_MAJOR,
    UNIX98_PTY_MASTER_MAJORS,
    UNIX98_PTY_SLAVE_MAJORS,
)
from ..log import log
from . import proc
from .files import OpenFd, RegParams, add_file, dumper, fown, reg_entry

TTY_PTY = 1
QUEUE_MAX = 16384  # CRIU's limit on the data read from one end


def _termios(fd: int, req: int, msg) -> None:
    raw = fcntl.ioctl(fd, req, bytes(36))
    msg.c_iflag, msg.c_oflag, msg.c_cflag, msg.c_lflag, msg.c_line = struct.unpack_from("<4IB", raw)
    cc = raw[17:36].ljust(4 * KERNEL_NCCS, b"\0")
    msg.c_cc.extend(struct.unpack(f"<{KERNEL_NCCS}I", cc))
    msg.c_ispeed = msg.c_ospeed = 0


def _int_ioctl(fd: int, req: int) -> int:
    """An int-returning tty ioctl, 0 where the terminal has no such thing (ENOTTY), as CRIU's
    parasite reads them; OSError(EIO) for a hung-up terminal."""
    try:
        return struct.unpack("i", fcntl.ioctl(fd, req, bytes(4)))[0]
    except OSError as e:
        if e.errno == errno.ENOTTY:
            return 0
        raise


class PtyQueue:
    """One end of a pty met in this dump, kept (a duplicate of its description) until the end,
    when its queued data is read."""

    __slots__ = ("info_id", "index", "lfd", "flags", "hung", "data")

    def __init__(self, info_id: int, index: int, lfd: int, flags: int, hung: bool = False) -> None:
        self.info_id, self.index, self.lfd, self.flags, self.hung = info_id, index, lfd, flags, hung
        self.data = b""


class Ptys:
    """The pty ends of one dump, in the order CRIU meets them (first fd of each end)."""

    def __init__(self) -> None:
        self.ends: dict[int, PtyQueue] = {}
        self.pairs: list[tuple[PtyQueue, PtyQueue]] = []

    def add(self, end: PtyQueue) -> None:
        self.ends[end.info_id] = end

    def unpaired_slaves(self) -> list[PtyQueue]:
        """Slaves (not hung up) whose master is not in the dump (or hung up)."""
        active = {e.info_id for e in self.ends.values() if not e.hung}
        return [e for e in self.ends.values() if not e.hung and not e.info_id & 1 and (e.info_id | 1) not in active]

    def dump_queued(self, images) -> None:
        """tty-data.img: what is queued at each end of each pair, read without blocking (CRIU's
        order: pairs latest first, each end before its peer)."""
        ends = list(self.ends.values())
        linked: set[int] = set()
        for i, a in enumerate(ends):
            if a.info_id in linked:
                continue
            for b in ends[i + 1 :]:
                if b.info_id not in linked and b.index == a.index:
                    linked |= {a.info_id, b.info_id}
                    self.pairs.insert(0, (a, b))
                    break
        for pair in self.pairs:
            for end in pair:
                end.data = _drain(end)
                if end.data:
                    images.add("tty-data.img", "TTY_DATA",
                               codec.pb("tty_data_entry", lite=True)(tty_id=end.info_id, data=end.data))

    def write_back(self) -> None:
        """The tree runs on: give every pair back what the dump read from it, and each end its
        blocking mode (CRIU's tty_do_writeback_queued_data and tty_reblock)."""
        for a, b in self.pairs:
            for end, peer in ((a, b), (b, a)):
                n, why = 0, "short write"
                try:
                    if end.data:
                        n = os.write(peer.lfd, end.data)
                except OSError as e:
                    why = e.strerror
                finally:
                    try:
                        fcntl.fcntl(peer.lfd, fcntl.F_SETFL, peer.flags)
                    except OSError as e:
                        log.warn("tty", f"pty {peer.index}: can't set its file flags back: {e.strerror}")
                if n != len(end.data):
                    log.warn("tty", f"pty {end.index}: gave back {n} of {len(end.data)} queued bytes ({why})")

    def close(self) -> None:
        for e in self.ends.values():
            os.close(e.lfd)
        self.ends.clear()


def _drain(end: PtyQueue) -> bytes:
    """What is queued at one end, read without blocking, up to CRIU's limit (the rest is left, as
    CRIU leaves it, with the same error in the log)."""
    try:
        fcntl.fcntl(end.lfd, fcntl.F_SETFL, end.flags | os.O_NONBLOCK)
    except OSError as e:
        raise SpiceError("dump", f"pty {end.index}: can't read its queued data: {e.strerror}") from None
    out = b""
    while len(out) < QUEUE_MAX:
        try:
            chunk = os.read(end.lfd, QUEUE_MAX - len(out))
        except BlockingIOError:
            break
        except OSError as e:
            if e.errno == errno.EIO:  # nothing on the other side any more
                break
            raise SpiceError("dump", f"pty {end.index}: can't read its queued data: {e.strerror}") from None
        if not chunk:
            break
        out += chunk
    if len(out) >= QUEUE_MAX:
        log.warn("tty", f"pty {end.index}: queued data overflows the {QUEUE_MAX}-byte limit (as with criu, the rest "
                         "stays queued)")
    return out


def ptys(ctx) -> Ptys:
    if ctx.ttys is None:
        ctx.ttys = Ptys()
    return ctx.ttys


def _end_of(of: OpenFd) -> tuple[int, bool]:
    """(pty index, is the master) of a pty fd; SpiceError for other terminals."""
    rdev = of.st.st_rdev
    major, minor = os.major(rdev), os.minor(rdev)
    if (major, minor) == (TTYAUX_MAJOR, PTMX_MINOR) or major in UNIX98_PTY_MASTER_MAJORS:
        try:
            return struct.unpack("I", fcntl.ioctl(of.lfd, TIOCGPTN, bytes(4)))[0], True
        except OSError as e:
            raise SpiceError("dump", f"{of.describe()}: can't read the pty's index: {e.strerror}") from None
    if major in UNIX98_PTY_SLAVE_MAJORS:
        return (major - UNIX98_PTY_SLAVE_MAJORS.start) * 256 + minor, False
    raise SpiceError("dump", f"{of.describe()}: tty device {major}:{minor} (only Unix98 ptys are supported)")


def _session(of: OpenFd, master: bool) -> tuple[int, int]:
    """(sid, foreground pgrp) as TIOCGSID/TIOCGPGRP answer the task: a master reports its slave's
    session; a slave only if it is the task's controlling terminal."""
    if master:
        return _int_ioctl(of.lfd, TIOCGSID), _int_ioctl(of.lfd, TIOCGPGRP)
    if stat_tty_nr(of.pid) != _new_encode(of.st.st_rdev):
        return 0, 0
    return proc.stat(of.pid).sid, stat_tpgid(of.pid)


@dumper("tty")
def _dump_tty(of: OpenFd, fid: int) -> str:
    index, master = _end_of(of)
    info_id = index << 1 | master  # CRIU's tty_gen_id
    ctx = of.ctx
    ends = ptys(ctx)
    if info_id not in ends.ends:
        _dump_info(of, info_id, index, master)
    regf = ctx.files.new()
    reg_entry(ctx, regf, of.lfd, of.link, of.st, RegParams(of.flags, 0, fown(of.lfd)), of.describe(), ghost=False)
    te = codec.pb("tty_file_entry", lite=True)(id=fid, tty_info_id=info_id, flags=of.flags, regf_id=regf)
    for k, v in fown(of.lfd).items():
        setattr(te.fown, k, v)
    add_file(ctx, "TTY", fid, "tty", te)
    return "TTY"


def _dump_info(of: OpenFd, info_id: int, index: int, master: bool) -> None:
    ctx = of.ctx
    rdev = of.st.st_rdev
    ti = codec.pb("tty_info_entry", lite=True)(id=info_id, type=TTY_PTY, rdev=rdev & 0xFFFFFFFF,
                                               dev=of.st.st_dev & 0xFFFFFFFF, uid=of.st.st_uid, gid=of.st.st_gid)
    ti.pty.index = index
    try:
        sid, pgrp = _session(of, master)
        ti.exclusive = bool(_int_ioctl(of.lfd, TIOCGEXCL))
        ti.packet_mode = bool(_int_ioctl(of.lfd, TIOCGPKT))
        ti.locked = bool(_int_ioctl(of.lfd, TIOCGPTLCK))
    except OSError as e:
        if e.errno != errno.EIO:
            raise SpiceError("dump", f"{of.describe()}: reading the terminal's state: {e.strerror}") from None
        # hung up (its other end is gone): only what CRIU keeps of it, no settings
        ti.sid = ti.pgrp = 0
        ti.locked = ti.exclusive = ti.packet_mode = False
        ptys(ctx).add(PtyQueue(info_id, index, os.dup(of.lfd), of.flags, hung=True))
        ctx.images.add("tty-info.img", "TTY_INFO", ti)
        return
    if sid and not ctx.opts.shell_job and sid not in _tree_pids(of):
        raise SpiceError("dump", f"{of.describe()}: found dangling tty with sid {sid}: the task is attached to "
                         "a shell terminal. Consider using --shell-job option")
    ti.sid, ti.pgrp = ctx.vpid(sid), ctx.vpid(pgrp)  # ours (ioctl, /proc): the image holds the tree's
    try:
        _termios(of.lfd, TCGETS, ti.termios)
        _termios(of.lfd, TIOCGLCKTRMIOS, ti.termios_locked)
        w = struct.unpack("4H", fcntl.ioctl(of.lfd, TIOCGWINSZ, bytes(8)))
    except OSError as e:
        raise SpiceError("dump", f"{of.describe()}: reading the terminal's settings: {e.strerror}") from None
    ti.winsize.ws_row, ti.winsize.ws_col, ti.winsize.ws_xpixel, ti.winsize.ws_ypixel = w
    ptys(ctx).add(PtyQueue(info_id, index, os.dup(of.lfd), of.flags))
    ctx.images.add("tty-info.img", "TTY_INFO", ti)


def check_pairs(ctx) -> None:
    """CRIU's tty_verify_active_pairs: a slave without its master in the dump is the job's
    terminal, which needs --shell-job, and there can be only one such."""
    slaves = ptys(ctx).unpaired_slaves()
    if slaves and not ctx.opts.shell_job:
        raise SpiceError("dump", f"pty slave /dev/pts/{slaves[0].index} without its master in the dump: the task "
                         "is attached to a terminal outside the tree. Consider using --shell-job option")
    if len(slaves) > 1:
        raise SpiceError("dump", f"pty slave /dev/pts/{slaves[1].index}: only one slave without its master "
                         "(the job's terminal) is allowed")


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
