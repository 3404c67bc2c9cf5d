# SPDX-License-Identifier: MIT
"""pidfd: a process handle (pidfd_open, clone's CLONE_PIDFD), as CRIU 4.2 dumps it (PIDFD entry).

Mirror of restore/pidfds.py. fdinfo names the process (NSpid, -1 once it has exited and been
reaped); the image keeps that pid, the pidfd's inode and PIDFD_NONBLOCK. As in CRIU, a pidfd of a
live process outside the dumped tree is refused: the restore could not make it point at anything.
"""

from __future__ import annotations

import os

from ..errors import SpiceError
from ..images import codec
from .files import OpenFd, add_file, dumper, fown


@dumper("pidfd")
def _dump_pidfd(of: OpenFd, fid: int) -> str:
    ns = of.info.extra.get("NSpid", "").split()
    if not ns:
        raise SpiceError("dump", f"{of.describe()}: no NSpid in its fdinfo")
    nspid = int(ns[-1])
    if nspid != -1 and nspid not in {of.ctx.vpid(p) for p in of.ctx.pids}:  # (NSpid's last: the tree's)
        raise SpiceError("dump", f"{of.describe()}: pidfd pid {nspid} is not a part of process tree")
    e = codec.pb("pidfd_entry", lite=True)(id=fid, ino=of.st.st_ino & 0xFFFFFFFF, flags=of.flags & os.O_NONBLOCK,
                                           nspid=nspid)
    for k, v in fown(of.lfd).items():
        setattr(e.fown, k, v)
    add_file(of.ctx, "PIDFD", fid, "pidfd", e)
    return "PIDFD"
