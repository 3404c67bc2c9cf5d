# SPDX-License-Identifier: MIT
"""Pipes and FIFOs with their buffered data (pipes-data.img / fifo-data.img).

A pipe is created once per pipe_id with both ends in the restorer; the queued bytes are written
back in, the pipe size is restored, and each end's file description is handed to whoever held it.
"""

from __future__ import annotations

import fcntl
import os

from ..errors import SpiceError
from ..images.imagedir import ImageDir
from ..record import Factory, Record
from .eventfds import with_file_params
from .files import _NOT_REPLAYED, O_ACCMODE, O_CLOEXEC, O_NONBLOCK, FileObj, OpenContext, planner

TYPE_CHECKING = False  # typing costs ~10 ms of start-up; annotations are strings
if TYPE_CHECKING:
    from typing import Any, ClassVar

F_SETPIPE_SZ = 1031


class PipeData(Record):
    data: bytes = b""
    size: int | None = None


class PipeEnd(FileObj):
    pipe_id: int = 0
    data: PipeData = Factory(PipeData)
    fown: Any = None  # F_SETOWN/F_SETSIG: where O_ASYNC sends its SIGIO
    kind: ClassVar[str] = "pipe"

    def describe(self) -> str:
        return f"pipe:[{self.pipe_id}] (file id {self.id})"

    def open(self, ctx: OpenContext) -> int:
        key = f"pipe:[{self.pipe_id}]"
        if key in ctx.inherit:
            return os.dup(ctx.inherit[key])
        r, w = _pipe_pair(ctx, self.pipe_id, self.data)
        end = w if (self.flags & O_ACCMODE) == os.O_WRONLY else r
        return with_file_params(os.dup(end), self.flags, self.fown, self.describe())


def _pipe_pair(ctx: OpenContext, pipe_id: int, pdata: PipeData) -> tuple[int, int]:
    pairs: dict[int, tuple[int, int]] = ctx.kind_cache("pipes")
    if pipe_id not in pairs:
        r, w = os.pipe2(O_CLOEXEC)
        pairs[pipe_id] = (r, w)
        ctx.cleanup.append(lambda: (os.close(r), os.close(w)))
        _fill(r, w, pdata, f"pipe:[{pipe_id}]")
    return pairs[pipe_id]


def _fill(r: int, w: int, pdata: PipeData, what: str) -> None:
    try:
        if pdata.size:
            fcntl.fcntl(w, F_SETPIPE_SZ, pdata.size)
        if pdata.data:
            os.set_blocking(w, False)
            if os.write(w, pdata.data) != len(pdata.data):
                raise SpiceError("pipes", f"{what}: could not queue {len(pdata.data)} bytes")
            os.set_blocking(w, True)
    except OSError as e:
        raise SpiceError("pipes", f"{what}: restoring {len(pdata.data)} queued bytes: {e.strerror}") from None


class Fifo(FileObj):
    pipe_id: int = 0
    path: str = ""
    data: PipeData = Factory(PipeData)
    fown: Any = None
    kind: ClassVar[str] = "fifo"

    def describe(self) -> str:
        return f"fifo {self.path} (file id {self.id})"

    def open(self, ctx: OpenContext) -> int:
        path = ctx.path(self.path)
        # O_RDWR first so opening either end never blocks waiting for its peer; it also keeps
        # the queued data alive until the real ends exist
        holders: dict[int, int] = ctx.kind_cache("fifo_holders")
        try:
            if self.pipe_id not in holders:
                h = os.open(path, os.O_RDWR | O_CLOEXEC)
                holders[self.pipe_id] = h
                ctx.cleanup.append(lambda: os.close(h))
                _fill(h, h, self.data, f"fifo {path}")
            fd = os.open(path, (self.flags & ~_NOT_REPLAYED) | O_NONBLOCK | O_CLOEXEC)
        except OSError as e:
            raise SpiceError("pipes", f"can't open fifo {path} (file id {self.id}): {e.strerror}") from None
        return with_file_params(fd, self.flags, self.fown, self.describe())


def _data(imgdir: ImageDir, state: dict[str, Any], image: str) -> dict[int, PipeData]:
    key = "data:" + image
    if key not in state:
        d: dict[int, PipeData] = {}
        if imgdir.exists(image):
            for e in imgdir.load(image).entries:
                d[e.msg.pipe_id] = PipeData(e.extra or b"", e.msg.size if e.msg.HasField("size") else None)
        state[key] = d
    return state[key]


@planner("PIPE")
def _plan_pipe(e, imgdir: ImageDir, state: dict[str, Any]) -> FileObj:
    p = e.pipe
    data = _data(imgdir, state, "pipes-data.img").get(p.pipe_id, PipeData())
    return PipeEnd(p.id, p.flags, pipe_id=p.pipe_id, data=data, fown=p.fown)


@planner("FIFO")
def _plan_fifo(e, imgdir: ImageDir, state: dict[str, Any]) -> FileObj:
    from .files import file_path

    f = e.fifo
    regs = state.setdefault("regs", None)
    if regs is None:
        regs = state["regs"] = {x.id: x for x in imgdir.entries("files.img") if x.HasField("reg")}
    reg = regs.get(f.regf_id)
    if reg is None:
        file_path({}, f.regf_id, f"fifo (file id {f.id})")
    data = _data(imgdir, state, "fifo-data.img").get(f.pipe_id, PipeData())
    return Fifo(f.id, reg.reg.flags, pipe_id=f.pipe_id, path=reg.reg.name, data=data, fown=reg.reg.fown)
