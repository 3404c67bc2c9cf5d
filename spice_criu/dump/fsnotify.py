# SPDX-License-Identifier: MIT
"""inotify: an inotify fd and its watches, as CRIU 4.2 dumps them (one INOTIFY files.img entry).

Mirror of restore/fsnotify.py. /proc/PID/fdinfo lists every watch: its number (wd), the watched
inode (number and the kernel's superblock device), the event and ignored masks, and the inode's
file handle. CRIU records the handle, padded to 16 words, and the path it opens through it: the
handle is opened (open_by_handle_at) on each mount of that device until the inode found is the
watched one, and the path of what was opened is read back. Events queued and not read yet are
not part of the image (nor of CRIU's). fanotify is refused (as an unknown kind).
"""

from __future__ import annotations

import os
import re
import struct

from .. import mountinfo
from ..errors import SpiceError
from ..images import codec
from ..linux import fsnotify
from . import proc
from .files import OpenFd, add_file, dumper, fown

_WD = re.compile(r"inotify wd:([0-9a-f]+) ino:([0-9a-f]+) sdev:([0-9a-f]+) mask:([0-9a-f]+) "
                 r"ignored_mask:([0-9a-f]+)(?: fhandle-bytes:([0-9a-f]+) fhandle-type:([0-9a-f]+) "
                 r"f_handle:([0-9a-f]*))?")
HANDLE_WORDS = 16  # fh_entry_sizes.min_entries: CRIU writes at least this many handle words


@dumper("inotify")
def _dump_inotify(of: OpenFd, fid: int) -> str:
    text = proc.read_text(f"/proc/{of.pid}/fdinfo/{of.fd}", of.describe())
    e = codec.pb("inotify_file_entry", lite=True)(id=fid, flags=of.flags)
    for k, v in fown(of.lfd).items():
        setattr(e.fown, k, v)
    mounts: str | None = None
    for m in _WD.finditer(text):
        wd, ino, sdev, mask, ignored = (int(x, 16) for x in m.groups()[:5])
        what = f"{of.describe()}: watch {wd} (inode {ino} of device {sdev >> 20}:{sdev & 0xFFFFF})"
        if m[6] is None or not m[8]:
            raise SpiceError("dump", f"{what}: the kernel gives no file handle for it: not supported")
        htype, handle = int(m[7], 16), bytes.fromhex(m[8])
        if mounts is None:
            mounts = proc.read_text("/proc/self/mountinfo", "mountinfo")
        w = e.wd.add()
        w.id, w.i_ino, w.mask, w.ignored_mask, w.s_dev, w.wd = 0, ino, mask, ignored, sdev, wd
        w.f_handle.bytes, w.f_handle.type = int(m[6], 16), htype
        padded = handle.ljust(max(HANDLE_WORDS * 8, -(-len(handle) // 8) * 8), b"\0")
        w.f_handle.handle.extend(struct.unpack(f"<{len(padded) // 8}Q", padded))
        w.f_handle.path = _path(sdev, ino, htype, handle, mounts, what)
    add_file(of.ctx, "INOTIFY", fid, "ify", e)
    return "INOTIFY"


def _path(sdev: int, ino: int, htype: int, handle: bytes, mounts: str, what: str) -> str:
    """The path of the watched inode, through the first mount of its device that opens it."""
    for mnt in mountinfo.mount_points(mounts, sdev >> 20, sdev & 0xFFFFF):
        try:
            mfd = os.open(mnt, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # not O_PATH: EBADF
        except OSError:
            continue
        try:
            fd = fsnotify.open_by_handle(mfd, htype, handle)
        except OSError:
            continue
        finally:
            os.close(mfd)
        try:
            if os.fstat(fd).st_ino != ino:
                continue
            path = os.readlink(f"/proc/{os.getpid()}/fd/{fd}")
        finally:
            os.close(fd)
        if path.endswith(" (deleted)"):
            raise SpiceError("dump", f"{what}: the watched file {path} is deleted: not supported")
        return path
    raise SpiceError("dump", f"{what}: can't open it through its file handle on any mount: not supported")
