# SPDX-License-Identifier: MIT
"""inotify: an INOTIFY files.img entry made again, every watch with its dumped number.

Mirror of dump/fsnotify.py. Each watched file is opened by the path the image holds (CRIU 4
writes it next to the file handle; an image without one is refused), and watched through that
open file with the dumped mask. Watch numbers only grow within an inotify instance, so a watch
that comes back with a lower number than the dumped one is removed and added again until it gets
its number, as CRIU does; the IN_IGNORED events these removals queue are read off before the fd
is handed to the task. Events that were queued at dump time are not in the image (nor in CRIU's).
"""

from __future__ import annotations

import os

from ..errors import SpiceError
from ..images.imagedir import ImageDir
from ..linux import fsnotify
from .eventfds import restore_file_params
from .files import FileObj, OpenContext, planner

TYPE_CHECKING = False  # typing costs ~10 ms of start-up; annotations are strings
if TYPE_CHECKING:
    from typing import Any, ClassVar


class Inotify(FileObj):
    e: Any = None
    kind: ClassVar[str] = "inotify"

    def describe(self) -> str:
        return f"inotify (file id {self.id}, {len(self.e.wd)} watches)"

    def open(self, ctx: OpenContext) -> int:
        fd = fsnotify.init1(fsnotify.IN_NONBLOCK | fsnotify.IN_CLOEXEC)
        try:
            for w in sorted(self.e.wd, key=lambda w: w.wd):
                self._watch(ctx, fd, w)
            while True:  # the IN_IGNORED events of the watches removed on the way
                try:
                    os.read(fd, 65536)
                except BlockingIOError:
                    break
            restore_file_params(fd, self.flags, self.e.fown, self.describe())
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _watch(self, ctx: OpenContext, fd: int, w) -> None:
        path = w.f_handle.path if w.f_handle.HasField("path") else ""
        what = f"{self.describe()}: watch {w.wd}"
        if not path:
            raise SpiceError("files", f"{what} (inode {w.i_ino}) has no path in the image: not supported")
        try:
            target = os.open(ctx.path(path), fsnotify.O_PATH | os.O_CLOEXEC)
        except OSError as e:
            raise SpiceError("files", f"{what}: can't open the watched {path}: {e.strerror}") from None
        try:
            while True:
                wd = fsnotify.add_watch(fd, f"/proc/self/fd/{target}", w.mask)
                if wd == w.wd:
                    return
                if wd > w.wd:
                    raise SpiceError("files", f"{what} on {path}: got watch {wd}, past the dumped number")
                fsnotify.rm_watch(fd, wd)
        except OSError as e:
            raise SpiceError("files", f"{what} on {path}: {e.strerror}") from None
        finally:
            os.close(target)


@planner("INOTIFY")
def _plan_inotify(e, imgdir: ImageDir, state: dict[str, Any]) -> FileObj:
    return Inotify(e.ify.id, e.ify.flags, e=e.ify)
