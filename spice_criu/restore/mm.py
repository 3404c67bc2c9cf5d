# SPDX-License-Identifier: MIT
"""Address-space plans: each VMA with its backing (anon, file, shared memory) and its page data.

Both backends consume these: the ptrace backend maps the VMAs and preadv()s the private pages
inside the task; the kmod backend hands the same table to /dev/spice.
"""

from __future__ import annotations

from .. import vma as V
from ..errors import ImageError, SpiceError
from ..images.imagedir import ImageDir
from ..images.pagemap import PageRun, read_runs
from ..record import Factory, Record

ANON = "anon"
FILE_PRIVATE = "file-private"
FILE_SHARED = "file-shared"
SHMEM = "shmem"  # MAP_SHARED anonymous or memfd-backed: one shared memory object per shmid
VDSO = "vdso"
VVAR = "vvar"
VSYSCALL = "vsyscall"
MEMFD_PRIVATE = "memfd-private"  # MAP_PRIVATE of a memfd: its object plus private dirty pages


class ShmemPlan(Record):
    """A shared-memory object (MAP_SHARED|MAP_ANONYMOUS or a memfd) and its contents."""

    shmid: int
    size: int
    runs: list[PageRun]  # vaddr in these runs = byte offset into the object
    name: str = "spice-shmem"  # memfd name (memfds keep theirs: "/memfd:NAME (deleted)")
    memfd: bool = False
    seals: int = 0


class VmaPlan(Record):
    start: int
    end: int
    prot: int
    flags: int
    status: int
    pgoff: int
    kind: str
    madv: int = 0
    path: str | None = None  # file-backed: the file
    file_id: int | None = None  # file-backed: its files.img object (a deleted file is a ghost)
    open_flags: int = 0  # file-backed: how to open it
    shmem: ShmemPlan | None = None
    runs: list[PageRun] = Factory(list)  # private page data inside this VMA

    @property
    def size(self) -> int:
        return self.end - self.start


class MmPlan(Record):
    vmas: list[VmaPlan]
    start_code: int
    end_code: int
    start_data: int
    end_data: int
    start_stack: int
    start_brk: int
    brk: int
    arg_start: int
    arg_end: int
    env_start: int
    env_end: int
    auxv: list[int]
    exe_path: str
    dumpable: int | None
    thp_disabled: bool
    pages_total: int
    exe_file_id: int = -1  # its files.img object (a deleted exe is a ghost); -1: none (zombies)

    def private_runs(self) -> list[PageRun]:
        return [r for v in self.vmas for r in v.runs]


def _clip_runs(runs: list[PageRun], i: int, start: int, end: int) -> tuple[list[PageRun], int]:
    """The parts of `runs` (sorted, disjoint) inside [start, end), looking from runs[i] on (every
    run before it ends at or below start); returns them and where to look from for a later range."""
    n = len(runs)
    while i < n and runs[i].end <= start:
        i += 1
    out = []
    j = i
    while j < n:
        r = runs[j]
        if r.vaddr >= end:
            break
        r_end = r.end
        if r.vaddr >= start and r_end <= end:
            out.append(r)  # wholly inside (the usual case): runs are immutable, share it
        else:
            lo, hi = max(r.vaddr, start), min(r_end, end)
            off = r.offset + (lo - r.vaddr) if r.pages_file else 0
            out.append(PageRun(lo, (hi - lo) // V.PAGE_SIZE, r.flags, r.pages_file, off))
        if r_end > end:
            break  # it goes on into the next range
        j += 1
    return out, i


def plan_shmem(imgdir: ImageDir, shmid: int, size: int, cache: dict[int, ShmemPlan]) -> ShmemPlan:
    sh = cache.get(shmid)
    if sh is None:
        name = f"pagemap-shmem-{shmid}.img"
        runs = read_runs(imgdir.file(name)) if imgdir.exists(name) else []
        sh = cache[shmid] = ShmemPlan(shmid, size, [r for r in runs if r.pages_file])
    sh.size = max(sh.size, size)
    return sh


def plan_mm(
    imgdir: ImageDir, pid: int, files: dict[int, object], shmems: dict[int, ShmemPlan]
) -> MmPlan:
    """Read mm-<pid>.img and pagemap-<pid>.img into a validated MmPlan."""
    from .files import MemfdFile, RegFile  # the file table is planned first

    mm = imgdir.one(f"mm-{pid}.img")
    runs = [r for r in read_runs(imgdir.file(f"pagemap-{pid}.img")) if r.pages_file]
    cursor = 0  # into runs: the VMAs come in address order
    covered = 0
    where = f"mm-{pid}.img"
    vmas: list[VmaPlan] = []
    prev_end = 0
    for e in mm.vmas:
        st = e.status
        if e.start % V.PAGE_SIZE or e.end % V.PAGE_SIZE or e.end <= e.start or e.start < prev_end:
            raise ImageError(imgdir / where, f"bad VMA 0x{e.start:x}-0x{e.end:x}")
        prev_end = e.end
        for bit, what in V.UNSUPPORTED_STATUS.items():
            if st & bit:
                raise SpiceError("restore", f"task {pid}: VMA 0x{e.start:x}-0x{e.end:x} is a {what}: not supported")
        v = VmaPlan(e.start, e.end, e.prot, e.flags & V.MAP_RESTORABLE, st, e.pgoff, ANON, e.madv)
        if st & V.VMA_AREA_VSYSCALL:
            v.kind = VSYSCALL
        elif st & V.VMA_AREA_VDSO:
            v.kind = VDSO
        elif st & V.VMA_AREA_VVAR:
            v.kind = VVAR
        elif st & V.VMA_AREA_MEMFD:
            f = files.get(e.shmid)
            if not isinstance(f, MemfdFile):
                raise ImageError(imgdir / where, f"memfd VMA 0x{e.start:x} refers to unknown file id {e.shmid}")
            v.kind = SHMEM if e.flags & V.MAP_SHARED else MEMFD_PRIVATE
            v.shmem = f.inode
            v.open_flags = f.flags
        elif st & V.VMA_ANON_SHARED:
            v.kind = SHMEM
            v.shmem = plan_shmem(imgdir, e.shmid, e.pgoff + v.size, shmems)
        elif st & (V.VMA_FILE_PRIVATE | V.VMA_FILE_SHARED):
            f = files.get(e.shmid)
            if not isinstance(f, RegFile):
                raise ImageError(imgdir / where, f"file VMA 0x{e.start:x} refers to unknown file id {e.shmid}")
            v.kind = FILE_SHARED if st & V.VMA_FILE_SHARED else FILE_PRIVATE
            v.path = f.path
            v.file_id = e.shmid
            v.open_flags = e.fdflags if e.HasField("fdflags") else 0
        elif not st & V.VMA_ANON_PRIVATE:
            raise SpiceError("restore", f"task {pid}: VMA 0x{e.start:x} has unknown status 0x{st:x}")
        inside, cursor = _clip_runs(runs, cursor, v.start, v.end)
        # vDSO pages are dumped too but come from the running kernel, not the image
        if inside:
            covered += sum(r.nr_pages for r in inside)
            if v.kind in (ANON, FILE_PRIVATE, MEMFD_PRIVATE):
                v.runs = inside
        vmas.append(v)
    total = sum(r.nr_pages for v in vmas for r in v.runs)
    if covered != sum(r.nr_pages for r in runs):
        raise ImageError(imgdir / f"pagemap-{pid}.img", "pages lie outside every VMA")
    exe = files.get(mm.exe_file_id)
    if not isinstance(exe, RegFile):
        raise ImageError(imgdir / where, f"exe_file_id {mm.exe_file_id} is not a regular file")
    return MmPlan(
        vmas=vmas,
        start_code=mm.mm_start_code,
        end_code=mm.mm_end_code,
        start_data=mm.mm_start_data,
        end_data=mm.mm_end_data,
        start_stack=mm.mm_start_stack,
        start_brk=mm.mm_start_brk,
        brk=mm.mm_brk,
        arg_start=mm.mm_arg_start,
        arg_end=mm.mm_arg_end,
        env_start=mm.mm_env_start,
        env_end=mm.mm_env_end,
        auxv=list(mm.mm_saved_auxv),
        exe_path=exe.path,
        exe_file_id=mm.exe_file_id,
        dumpable=mm.dumpable if mm.HasField("dumpable") else None,
        thp_disabled=mm.thp_disabled,
        pages_total=total,
    )


def shmem_pages_file_check(sh: ShmemPlan) -> None:
    for r in sh.runs:
        if r.end > sh.size:
            raise ImageError(
                r.pages_file or "?", f"shmem {sh.shmid} has pages beyond its {sh.size} bytes"
            )
