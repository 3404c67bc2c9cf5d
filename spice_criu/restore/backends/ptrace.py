# SPDX-License-Identifier: MIT
"""The userspace backend: builds each task's address space by syscalls executed inside the task.

Works on any Linux (no module needed). Per task: tear the inherited (restorer) mappings down,
move the running kernel's vDSO/vvar to the dumped addresses, mmap every VMA, preadv() private
pages straight from pages-N.img inside the task (nothing is copied through the restorer), restore
protections and madvise state, then PR_SET_MM_MAP the mm fields, auxv and exe file.
"""

from __future__ import annotations

import os
import struct

from ... import vma as V
from ...errors import SpiceError
from ...faults import fault_point
from ...images.pagemap import contiguous_batches
from ...linux.syscalls import NR
from ...log import log
from ..files import OpenContext
from ..mm import ANON, FILE_PRIVATE, FILE_SHARED, MEMFD_PRIVATE, SHMEM, VDSO, VSYSCALL, VVAR, MmPlan, VmaPlan
from ..task import TRAMPOLINE_SIZE, TaskCtl, parse_maps
from . import pagesplit
from .common import KERNEL_AREAS, O_RDONLY, kernel_areas, open_mm_files, queue_madvise, queue_vdso_moves

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from ..batch import Batch

name = "ptrace"
IOV_MAX = 1024
PR_SET_MM, PR_SET_MM_MAP = 35, 14
MADV_POPULATE_WRITE = 23  # Linux >= 5.14


def task_size(maps: list[tuple[int, int, str]]) -> int:
    top = max((hi for lo, hi, n in maps if n != "[vsyscall]"), default=0)
    return 0x7FFFFFFFF000 if top <= 0x7FFFFFFFF000 else (1 << 56) - V.PAGE_SIZE


def teardown(task: TaskCtl, b) -> dict[str, tuple[int, int]]:
    """Queue on batch b the unmapping of everything the task inherited except the trampoline and
    the kernel's own areas. Returns the kernel areas' current positions by name.
    """
    maps = parse_maps(task.pid)
    keep = sorted(
        [(lo, hi) for lo, hi, n in maps if n in KERNEL_AREAS] + [(task.tramp, task.tramp + TRAMPOLINE_SIZE)]
    )
    top = task_size(maps)
    pos = 0
    for lo, hi in [*keep, (top, top)]:
        if lo > pos and pos < top:
            b.add(NR.munmap, pos, min(lo, top) - pos, what=f"munmap 0x{pos:x}")
        pos = max(pos, hi)
    return kernel_areas(maps)


def _map_flags(v: VmaPlan) -> int:
    return (v.flags & V.MAP_RESTORABLE) | V.MAP_FIXED


def build_vmas(task: TaskCtl, mm: MmPlan, ctx: OpenContext, then: Callable[[Batch], None] | None = None) -> int:
    """Map every VMA, read private pages in, set protections/advice and the mm fields.

    Batches: open every file the address space needs (and a pidfd of the restorer); pull the
    shared-memory objects; then everything else (split in three for a large address space, whose
    pages the task and the restorer load in parallel, see pagesplit). Returns the number of pages read.
    """
    # 1+2: files (VMAs, page images, exe), the shared memory objects pulled from the restorer
    files = open_mm_files(task, mm, ctx)
    fds, shm_fds = files.fds, files.shm
    runs, restorer_runs = pagesplit.split(mm)
    # 3: mappings, pages, protections, advice, mm fields, cleanup
    b = task.batch()
    fixups = []
    for v in mm.vmas:
        if v.kind in (VDSO, VVAR, VSYSCALL):
            continue
        prot = v.prot | (V.PROT_READ | V.PROT_WRITE if v.runs else 0)
        if v.kind == ANON:
            fd, off, flags = -1, 0, _map_flags(v) | V.MAP_ANONYMOUS
        elif v.kind in (FILE_PRIVATE, FILE_SHARED):
            fd, off, flags = files.mapped[v.start], v.pgoff, _map_flags(v)
        elif v.kind in (SHMEM, MEMFD_PRIVATE):
            assert v.shmem is not None
            fd, off, flags = shm_fds[v.shmem.shmid], v.pgoff, _map_flags(v)
        else:
            raise SpiceError("restore", f"task {task.pid}: VMA kind {v.kind} not supported")
        b.add(NR.mmap, v.start, v.size, prot, flags, fd, off, what=f"mmap 0x{v.start:x}")
        if prot != v.prot:
            fixups.append(v)
    if restorer_runs:  # the VMAs must exist before the restorer writes into them
        b.run()
    _queue_populate(b, mm, runs)
    pages = _queue_page_reads(task, b, runs, fds)
    if restorer_runs:
        b.start()
        pagesplit.write_pages(task.pid, restorer_runs)
        b.finish()
        pages += sum(r.nr_pages for r in restorer_runs)
    for v in fixups:
        b.add(NR.mprotect, v.start, v.size, v.prot, what=f"mprotect 0x{v.start:x}")
    queue_madvise(b, mm)
    exe = files.exe
    auxv = struct.pack(f"<{len(mm.auxv)}Q", *mm.auxv)
    m = struct.pack(
        "<11QQII",
        mm.start_code, mm.end_code, mm.start_data, mm.end_data, mm.start_brk, mm.brk, mm.start_stack,
        mm.arg_start, mm.arg_end, mm.env_start, mm.env_end, task.put(auxv), len(auxv), exe & 0xFFFFFFFF,
    )
    b.add(NR.prctl, PR_SET_MM, PR_SET_MM_MAP, task.put(m), len(m), 0, what="prctl(PR_SET_MM_MAP)")
    for fd in files.temp:
        b.add(NR.close, fd, what="close")
    if then is not None:
        then(b)  # more of the task's state, in the same stop
    b.run()
    task.reset_scratch()
    return pages


def _queue_populate(b, mm: MmPlan, runs: list) -> None:
    """Allocate the anonymous pages that are about to be read in, in one pass per range.

    preadv() into untouched anonymous memory takes a page fault per 4 KiB page inside
    copy_to_user; MADV_POPULATE_WRITE allocates the same pages (exactly the dumped ones, so the
    resident set is unchanged) without the per-page fault entry: ~20% less time for a 60 MiB heap.
    Only anonymous VMAs: in private file mappings it would first copy the file's pages.
    """
    anon = [(v.start, v.end) for v in mm.vmas if v.kind == ANON]  # sorted, like mm.vmas
    i = 0
    for r in runs:  # sorted too: walk both
        while i < len(anon) and anon[i][1] <= r.vaddr:
            i += 1
        if r.pages_file and i < len(anon) and anon[i][0] <= r.vaddr:
            b.add(NR.madvise, r.vaddr, r.size, MADV_POPULATE_WRITE, what=f"populate 0x{r.vaddr:x}")


def _queue_page_reads(task: TaskCtl, b, runs: list, fds: dict[tuple[str, int], int]) -> int:
    """preadv() every private page range from its pages-N.img: one call per file-contiguous batch
    of up to IOV_MAX ranges (the ranges of one pagemap are contiguous in its pages file)."""
    pages = 0
    for batch in contiguous_batches(runs, IOV_MAX):
        path = str(batch[0].pages_file)
        iov = task.put(b"".join(struct.pack("<QQ", r.vaddr, r.size) for r in batch))
        b.add(NR.preadv, fds[(path, O_RDONLY)], iov, len(batch), batch[0].offset, 0, what=f"preadv {path}")
        pages += sum(r.nr_pages for r in batch)
    return pages


def build_mm(task: TaskCtl, ctx: OpenContext, then: Callable[[Batch], None] | None = None) -> int:
    """Replace the task's address space by the dumped one (`then` queues more on its last batch).
    Returns the number of pages read."""
    mm = task.plan.mm
    b = task.batch()
    areas = teardown(task, b)
    queue_vdso_moves(b, task, mm, areas)  # one stop for both
    b.run()
    task.reset_scratch()
    fault_point("restore-mm")
    pages = build_vmas(task, mm, ctx, then)
    log.debug(f"task {task.pid}: {len(mm.vmas)} VMAs, {pages} pages read")
    return pages


def install_core(task: TaskCtl, ctx: OpenContext) -> int:
    """The part of a task's state this backend owns: memory and sigactions (registers come last)."""
    from ..signals import queue_sigactions

    return build_mm(task, ctx, lambda b: queue_sigactions(task, b))


def finish_leader(task: TaskCtl) -> None:
    """The leader's last injected syscall unmaps the trampoline it runs from; at that syscall's exit
    stop it gets its dumped registers instead of returning to the trampoline."""
    from ...linux import ptrace
    from ..threads import final_regs, set_fpu

    leader = task.plan.leader
    task.sys(NR.munmap, task.tramp, TRAMPOLINE_SIZE, what="unmap trampoline")
    ptrace.setregs(task.pid, final_regs(leader))  # at the munmap's syscall-exit stop
    set_fpu(leader, task.pid)


def available() -> bool:
    return os.path.exists("/proc/self/maps")
