# SPDX-License-Identifier: MIT
"""Shared memory objects: memfds and MAP_SHARED|MAP_ANONYMOUS regions (memfd.img, pagemap-shmem-*).

Mirror of restore/shmem.py. On this kernel CRIU 4.2.1 dumps every mapping of a shmem-backed file
(shared anonymous memory is a "/dev/zero (deleted)" shmem file) as a memfd: one memfd_inode_entry
per inode, keyed shmid = inode number, its contents in pagemap-shmem-<shmid>.img (offsets as
addresses). Pages are the ones the inode really holds: data segments (SEEK_DATA) that are resident
(mincore), copied into pages-N.img with sendfile.
"""

from __future__ import annotations

import fcntl
import os

from .. import once
from ..errors import SpiceError
from ..images import codec
from ..images.pagemap import PE_PRESENT
from ..linux import mman
from .files import DELETED, MEMFD_PREFIX, RegParams, add_file, data_segments
from .pages import PAGE, PagesImage

TYPE_CHECKING = False  # typing costs ~10 ms of start-up; annotations are strings
if TYPE_CHECKING:
    from .run import DumpContext

F_GET_SEALS = 1034


@once
def shmem_dev() -> int:
    """st_dev of the kernel's internal shmem mount (CRIU's kdat.shmem_dev)."""
    addr = mman.mmap(0, PAGE, mman.PROT_READ, mman.MAP_SHARED | mman.MAP_ANONYMOUS)
    try:
        return os.stat(f"/proc/self/map_files/{addr:x}-{addr + PAGE:x}").st_dev
    finally:
        mman.munmap(addr, PAGE)


def memfd_name(link: str) -> str:
    if link.endswith(DELETED):
        link = link[: -len(DELETED)]
    return link[len(MEMFD_PREFIX):] if link.startswith(MEMFD_PREFIX) else link


def memfd_file(ctx: DumpContext, fid: int, fd: int, link: str, st: os.stat_result, p: RegParams) -> None:
    """A MEMFD file_entry (an fd of a memfd, or a mapping of shmem), dumping its inode on first use."""
    inode_id = _inode(ctx, fd, memfd_name(link), st)
    m = codec.pb("memfd_file_entry", lite=True)(id=fid, flags=p.flags, pos=p.pos, inode_id=inode_id)
    for k, v in p.fown.items():
        setattr(m.fown, k, v)
    add_file(ctx, "MEMFD", fid, "memfd", m)


def _inode(ctx: DumpContext, fd: int, name: str, st: os.stat_result) -> int:
    key = (st.st_dev, st.st_ino)
    iid = ctx.memfd_inodes.get(key)
    if iid is not None:
        return iid
    iid = ctx.memfd_inodes[key] = len(ctx.memfd_inodes) + 1
    shmid = st.st_ino
    try:
        rfd = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise SpiceError("dump", f"memfd {name} (inode {shmid}): can't open it: {e.strerror}") from None
    try:
        dump_contents(ctx, rfd, shmid, st.st_size)
        try:
            seals = fcntl.fcntl(rfd, F_GET_SEALS)
        except OSError as e:
            raise SpiceError("dump", f"memfd {name}: F_GET_SEALS: {e.strerror}") from None
    finally:
        os.close(rfd)
    ctx.images.add("memfd.img", "MEMFD_INODE", codec.pb("memfd_inode_entry", lite=True)(
        name=name, uid=st.st_uid, gid=st.st_gid, size=st.st_size, shmid=shmid, seals=seals, inode_id=iid,
        mode=st.st_mode))
    return iid


def _resident(fd: int, size: int) -> bytes:
    if not size:
        return b""
    addr = mman.mmap(0, size, mman.PROT_READ, mman.MAP_SHARED, fd, 0)
    try:
        return mman.mincore(addr, size)
    finally:
        mman.munmap(addr, size)


def dump_contents(ctx: DumpContext, fd: int, shmid: int, size: int) -> None:
    """pagemap-shmem-<shmid>.img and its pages: every resident page of the object's data segments."""
    npages = (size + PAGE - 1) // PAGE
    img = PagesImage(ctx.images, f"pagemap-shmem-{shmid}.img", ctx.next_pages_id(), ctx.page_stats)
    try:
        if npages:
            resident = _resident(fd, npages * PAGE)
            for lo, hi in data_segments(fd, npages * PAGE):
                pfn = lo // PAGE
                end = (hi + PAGE - 1) // PAGE
                while pfn < end:
                    if not resident[pfn] & 1:
                        pfn += 1
                        continue
                    run = pfn
                    while run < end and resident[run] & 1:
                        run += 1
                    img.entry(pfn * PAGE, run - pfn, PE_PRESENT)
                    avail = min(size, run * PAGE) - pfn * PAGE
                    img.sendfile(fd, pfn * PAGE, avail)
                    if avail < (run - pfn) * PAGE:  # the tail of the last page, past EOF
                        img.write(bytes((run - pfn) * PAGE - avail))
                    ctx.page_stats.sh_written += run - pfn
                    pfn = run
        ctx.page_stats.sh_scanned += npages
    finally:
        img.close()
