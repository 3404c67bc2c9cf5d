# SPDX-License-Identifier: MIT
"""Shared memory objects (MAP_SHARED|MAP_ANONYMOUS regions and memfds), created once per shmid.

The restorer creates each object as a memfd and fills it from pages-N.img with sendfile(), an
in-kernel copy; every task that maps it pulls the same memfd, so the memory stays shared.
"""

from __future__ import annotations

import fcntl
import os

from ..errors import SpiceError
from .files import OpenContext
from .mm import ShmemPlan

F_ADD_SEALS = 1033
_MFD_CLOEXEC, _MFD_ALLOW_SEALING = 0x1, 0x2
_PAGE = os.sysconf("SC_PAGE_SIZE")


def shmem_fd(ctx: OpenContext, sh: ShmemPlan) -> int:
    cache: dict[int, int] = ctx.kind_cache("shmem")
    fd = cache.get(sh.shmid)
    if fd is not None:
        return fd
    flags = os.MFD_CLOEXEC | (os.MFD_ALLOW_SEALING if sh.seals else 0)
    fd = os.memfd_create(sh.name, flags)
    cache[sh.shmid] = fd
    ctx.cleanup.append(lambda: os.close(fd))
    try:
        os.ftruncate(fd, sh.size)
        for r in sh.runs:
            # a memfd's size need not be page-aligned: its last page is dumped whole, and only
            # the bytes up to its size are written back (as criu reads it, through a mapping)
            if r.end > -(-sh.size // _PAGE) * _PAGE:
                raise SpiceError("restore", f"shared memory {sh.shmid}: pages beyond its {sh.size} bytes")
            src = os.open(r.pages_file, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.lseek(fd, r.vaddr, os.SEEK_SET)
                left, off = min(r.size, sh.size - r.vaddr), r.offset
                while left:
                    n = os.sendfile(fd, src, off, left)
                    if n <= 0:
                        raise SpiceError("restore", f"{r.pages_file}: short read at offset {off}")
                    left -= n
                    off += n
            finally:
                os.close(src)
        if sh.seals:
            fcntl.fcntl(fd, F_ADD_SEALS, sh.seals)
    except OSError as e:
        raise SpiceError("restore", f"shared memory {sh.shmid} ({sh.name}): {e.strerror}") from None
    return fd
