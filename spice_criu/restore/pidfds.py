# SPDX-License-Identifier: MIT
"""pidfd: a PIDFD files.img entry opened again on the restored process it names.

Mirror of dump/pidfds.py. Files are opened once the whole tree exists (with its dumped pids), so
pidfd_open(nspid) finds the restored process. A pidfd of a process that had already exited (nspid
-1) is made from a child of the restorer that exits at once and is reaped: a pidfd that reports
the exit and whose process is gone, as the dumped one was (CRIU does the same with a helper).
"""

from __future__ import annotations

import os

from ..errors import SpiceError
from ..images.imagedir import ImageDir
from .eventfds import restore_file_params
from .files import FileObj, OpenContext, planner

TYPE_CHECKING = False  # typing costs ~10 ms of start-up; annotations are strings
if TYPE_CHECKING:
    from typing import Any, ClassVar


class PidFd(FileObj):
    nspid: int = -1
    fown: Any = None
    kind: ClassVar[str] = "pidfd"

    def describe(self) -> str:
        return f"pidfd of {'an exited process' if self.nspid == -1 else f'pid {self.nspid}'} (file id {self.id})"

    def open(self, ctx: OpenContext) -> int:
        try:
            if self.nspid != -1:
                from .task import PIDS  # (the image's pid, the tree's -> ours)

                fd = os.pidfd_open(PIDS.host(self.nspid))
            else:
                pid = os.fork()
                if pid == 0:
                    os._exit(0)
                try:
                    fd = os.pidfd_open(pid)
                finally:
                    os.waitpid(pid, 0)
        except OSError as e:
            raise SpiceError("files", f"{self.describe()}: {e.strerror}") from None
        os.set_inheritable(fd, False)
        restore_file_params(fd, self.flags, self.fown, self.describe())
        return fd


@planner("PIDFD")
def _plan_pidfd(e, imgdir: ImageDir, state: dict[str, Any]) -> FileObj:
    p = e.pidfd
    return PidFd(p.id, p.flags, nspid=p.nspid, fown=p.fown)
