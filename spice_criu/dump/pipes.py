# SPDX-License-Identifier: MIT
"""Pipes and FIFOs, with the data queued in them (pipes-data.img / fifo-data.img).

Mirror of restore/pipes.py. Each end is a PIPE entry (pipe_id = the pipe's inode); the queued bytes
of every pipe are saved once, peeked with tee(2) so the pipe keeps them, together with the pipe's
buffer size. A named FIFO is a FIFO entry pointing at a REG entry for its path.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os

from ..errors import SpiceError
from ..images import codec
from ..linux.syscalls import fresh, libc
from .files import O_ACCMODE, O_WRONLY, OpenFd, RegParams, add_file, dumper, fown, reg_entry

O_DIRECT = 0o40000
F_GETPIPE_SZ, F_SETPIPE_SZ = 1032, 1031
SPLICE_F_NONBLOCK = 2
_tee = fresh(libc, "tee", ctypes.c_ssize_t, [ctypes.c_int, ctypes.c_int, ctypes.c_size_t, ctypes.c_uint])


def peek(rfd: int, what: str) -> tuple[bytes, int]:
    """(queued bytes, buffer size) of the pipe behind rfd (a read end), leaving the data in it."""
    size = fcntl.fcntl(rfd, F_GETPIPE_SZ)
    r, w = os.pipe2(os.O_CLOEXEC)
    try:
        if fcntl.fcntl(w, F_SETPIPE_SZ, size) < size:
            raise SpiceError("dump", f"{what}: can't make a {size}-byte pipe to copy its data")
        n = _tee(rfd, w, size, SPLICE_F_NONBLOCK)
        if n < 0:
            err = ctypes.get_errno()
            if err != errno.EAGAIN:
                raise SpiceError("dump", f"{what}: can't pick the pipe's data: {os.strerror(err)}")
            n = 0
        data = b""
        while len(data) < n:
            data += os.read(r, n - len(data))
    finally:
        os.close(r)
        os.close(w)
    return data, size


def _data(of: OpenFd, image: str, magic: str, pipe_id: int) -> None:
    """The pipe's queued data, once, from the first read end met (as CRIU: a pipe whose read end is
    outside the dumped tree gets no data entry)."""
    if (of.flags & O_ACCMODE) == O_WRONLY:
        return
    done = of.ctx.pipe_data_done
    if (image, pipe_id) in done:
        return
    done.add((image, pipe_id))
    data, size = peek(of.lfd, of.describe())
    entry = codec.pb("pipe_data_entry", lite=True)(pipe_id=pipe_id, bytes=len(data), size=size)
    of.ctx.images.add(image, magic, entry, data)


@dumper("pipe")
def dump_pipe(of: OpenFd, fid: int) -> str:
    if of.flags & O_DIRECT:
        raise SpiceError("dump", f"{of.describe()}: packetized (O_DIRECT) pipes: not supported")
    pipe_id = of.st.st_ino
    p = codec.pb("pipe_entry", lite=True)(id=fid, pipe_id=pipe_id, flags=of.flags & ~O_DIRECT)
    for k, v in fown(of.lfd).items():
        setattr(p.fown, k, v)
    add_file(of.ctx, "PIPE", fid, "pipe", p)
    _data(of, "pipes-data.img", "PIPES_DATA", pipe_id)
    return "PIPE"


@dumper("fifo")
def dump_fifo(of: OpenFd, fid: int) -> str:
    """A named FIFO: a REG entry for its path (a fresh id), then the FIFO entry, then its data."""
    ctx = of.ctx
    pipe_id = of.st.st_ino
    regf = ctx.files.new()
    reg_entry(ctx, regf, of.lfd, of.link, of.st, RegParams(of.flags, 0, fown(of.lfd)), of.describe())
    add_file(ctx, "FIFO", fid, "fifo", codec.pb("fifo_entry", lite=True)(id=fid, pipe_id=pipe_id, regf_id=regf))
    _data(of, "fifo-data.img", "FIFO_DATA", pipe_id)
    return "FIFO"
