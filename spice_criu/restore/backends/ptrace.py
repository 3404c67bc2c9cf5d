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
from ...linux.syscalls import NR
from ...log import log
from ..files import OpenContext
from ..mm import ANON, FILE_PRIVATE, FILE_SHARED, MEMFD_PRIVATE, SHMEM, VDSO, VSYSCALL, VVAR, MmPlan, VmaPlan
from ..shmem import shmem_fd
from ..task import TRAMPOLINE_SIZE, TaskCtl, find_hole, parse_maps

name = "ptrace"
IOV_MAX = 1024
MREMAP_MAYMOVE, MREMAP_FIXED = 1, 2
PR_SET_MM, PR_SET_MM_MAP = 35, 14
O_RDONLY, O_RDWR, O_CLOEXEC = 0, 2, 0o2000000
KERNEL_AREAS = ("[vdso]", "[vvar]", "[vvar_vclock]", "[vsyscall]")
#: madvise advice numbers (bits of vma_entry.madv) that restore re-applies
MADV_REAPPLY = (1, 2, 10, 11, 12, 14, 15, 16, 18)


def task_size(maps: list[tuple[int, int, str]]) -> int:
    top = max((hi for lo, hi, n in maps if n != "[vsyscall]"), default=0)
    return 0x7FFFFFFFF000 if top <= 0x7FFFFFFFF000 else (1 << 56) - V.PAGE_SIZE


def teardown(task: TaskCtl) -> dict[str, tuple[int, int]]:
    """Unmap everything the task inherited except the trampoline and the kernel's own areas.

    Returns the kernel areas' current positions by name.
    """
    maps = parse_maps(task.pid)
    keep = sorted(
        [(lo, hi) for lo, hi, n in maps if n in KERNEL_AREAS] + [(task.tramp, task.tramp + TRAMPOLINE_SIZE)]
    )
    top = task_size(maps)
    b = task.batch()
    pos = 0
    for lo, hi in [*keep, (top, top)]:
        if lo > pos and pos < top:
            b.add(NR.munmap, pos, min(lo, top) - pos, what=f"munmap 0x{pos:x}")
        pos = max(pos, hi)
    b.run()
    task.reset_scratch()
    return {n: (lo, hi) for lo, hi, n in maps if n in KERNEL_AREAS}


def move_vdso(task: TaskCtl, mm: MmPlan, areas: dict[str, tuple[int, int]]) -> None:
    """mremap the running kernel's [vvar](+[vvar_vclock]) and [vdso] to where the image had them."""
    moves: list[tuple[int, int, int]] = []  # (old, size, new)
    for v in mm.vmas:
        if v.kind == VDSO:
            names = ["[vdso]"]
        elif v.kind == VVAR:
            names = ["[vvar]", "[vvar_vclock]"]
        else:
            continue
        present = [areas[n] for n in names if n in areas]
        have = sum(hi - lo for lo, hi in present)
        if have != v.size:
            raise SpiceError(
                "restore",
                f"task {task.pid}: the image's {v.kind} is {v.size} bytes, this kernel's is {have}: "
                "images from another kernel are not supported",
            )
        new = v.start
        for lo, hi in present:
            moves.append((lo, hi - lo, new))
            new += hi - lo
    if not moves or all(old == new for old, _, new in moves):
        return
    # move through a free spot first: a target may overlap an area that has not moved yet
    avoid = [(v.start, v.end) for v in mm.vmas] + list(areas.values()) + [(task.tramp, task.tramp + TRAMPOLINE_SIZE)]
    spot = find_hole(avoid, sum(size for _, size, _ in moves))
    b = task.batch()
    staged = []
    for old, size, new in moves:
        b.add(NR.mremap, old, size, size, MREMAP_MAYMOVE | MREMAP_FIXED, spot, what="mremap vdso (stage)")
        staged.append((spot, size, new))
        spot += size
    for old, size, new in staged:
        b.add(NR.mremap, old, size, size, MREMAP_MAYMOVE | MREMAP_FIXED, new, what="mremap vdso")
    b.run()
    task.reset_scratch()


def _map_flags(v: VmaPlan) -> int:
    return (v.flags & V.MAP_RESTORABLE) | V.MAP_FIXED


def _file_mode(v: VmaPlan) -> int:
    writable = v.kind == FILE_SHARED and v.prot & V.PROT_WRITE
    return O_RDWR if writable or (v.open_flags & 3) == O_RDWR else O_RDONLY


def build_vmas(task: TaskCtl, mm: MmPlan, ctx: OpenContext) -> int:
    """Map every VMA, read private pages in, set protections/advice and the mm fields.

    Three batches: open every file the address space needs (and a pidfd of the restorer);
    pull the shared-memory objects; then everything else. Returns the number of pages read.
    """
    # 1: files (VMAs, page images, exe) and a pidfd of the restorer, for the memfds
    b = task.batch()
    slots: dict[tuple[str, int], int] = {}

    def want(path: str, mode: int) -> None:
        if (path, mode) not in slots:
            slots[(path, mode)] = b.add(NR.openat, -100, task.put_str(path), mode | O_CLOEXEC, 0, what=f"open {path}")

    for v in mm.vmas:
        if v.kind in (FILE_PRIVATE, FILE_SHARED):
            want(ctx.path(v.path or ""), _file_mode(v))
    runs = mm.private_runs()
    for path in sorted({str(r.pages_file) for r in runs}):
        want(path, O_RDONLY)
    exe_path = ctx.path(mm.exe_path)
    same_exe = _same_exe(task.pid, exe_path)
    if not same_exe:
        want(exe_path, O_RDONLY)
    shms = {v.shmem.shmid: v.shmem for v in mm.vmas if v.kind in (SHMEM, MEMFD_PRIVATE) and v.shmem}
    pidfd_slot = b.add(NR.pidfd_open, os.getpid(), 0, what="pidfd_open(restorer)") if shms else None
    res = b.run()
    task.reset_scratch()
    fds = {key: res[i] for key, i in slots.items()}
    temp_fds = list(fds.values())
    # 2: the shared memory objects, pulled from the restorer
    shm_fds: dict[int, int] = {}
    if shms:
        pidfd = res[pidfd_slot]
        b = task.batch()
        idx = {sid: b.add(NR.pidfd_getfd, pidfd, shmem_fd(ctx, sh), 0, what=f"pidfd_getfd shmem {sid}")
               for sid, sh in shms.items()}
        b.add(NR.close, pidfd, what="close pidfd")
        res = b.run()
        task.reset_scratch()
        shm_fds = {sid: res[i] for sid, i in idx.items()}
        temp_fds += list(shm_fds.values())
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
            fd, off, flags = fds[(ctx.path(v.path or ""), _file_mode(v))], v.pgoff, _map_flags(v)
        elif v.kind in (SHMEM, MEMFD_PRIVATE):
            assert v.shmem is not None
            fd, off, flags = shm_fds[v.shmem.shmid], v.pgoff, _map_flags(v)
        else:
            raise SpiceError("restore", f"task {task.pid}: VMA kind {v.kind} not supported")
        b.add(NR.mmap, v.start, v.size, prot, flags, fd, off, what=f"mmap 0x{v.start:x}")
        if prot != v.prot:
            fixups.append(v)
    pages = _queue_page_reads(task, b, runs, fds)
    for v in fixups:
        b.add(NR.mprotect, v.start, v.size, v.prot, what=f"mprotect 0x{v.start:x}")
    for v in mm.vmas:
        if v.madv and v.kind not in (VDSO, VVAR, VSYSCALL):
            for adv in MADV_REAPPLY:
                if v.madv & (1 << adv):
                    b.add(NR.madvise, v.start, v.size, adv, what=f"madvise({adv}) 0x{v.start:x}")
    exe = -1 if same_exe else fds[(exe_path, O_RDONLY)]
    auxv = struct.pack(f"<{len(mm.auxv)}Q", *mm.auxv)
    m = struct.pack(
        "<11QQII",
        mm.start_code, mm.end_code, mm.start_data, mm.end_data, mm.start_brk, mm.brk, mm.start_stack,
        mm.arg_start, mm.arg_end, mm.env_start, mm.env_end, task.put(auxv), len(auxv), exe & 0xFFFFFFFF,
    )
    b.add(NR.prctl, PR_SET_MM, PR_SET_MM_MAP, task.put(m), len(m), 0, what="prctl(PR_SET_MM_MAP)")
    for fd in temp_fds:
        b.add(NR.close, fd, what="close")
    res = b.run()
    task.reset_scratch()
    return pages


def _queue_page_reads(task: TaskCtl, b, runs: list, fds: dict[tuple[str, int], int]) -> int:
    """preadv() every private page range from its pages-N.img: one call per file-contiguous batch
    of up to IOV_MAX ranges (the ranges of one pagemap are contiguous in its pages file)."""
    by_file: dict[str, list] = {}
    for r in runs:
        by_file.setdefault(str(r.pages_file), []).append(r)
    pages = 0
    for path, rs in by_file.items():
        rs.sort(key=lambda r: r.offset)
        fd = fds[(path, O_RDONLY)]
        i = 0
        while i < len(rs):
            batch = [rs[i]]
            while (
                len(batch) < IOV_MAX
                and i + len(batch) < len(rs)
                and rs[i + len(batch)].offset == batch[-1].offset + batch[-1].size
            ):
                batch.append(rs[i + len(batch)])
            i += len(batch)
            iov = task.put(b"".join(struct.pack("<QQ", r.vaddr, r.size) for r in batch))
            b.add(NR.preadv, fd, iov, len(batch), batch[0].offset, 0, what=f"preadv {path}")
            pages += sum(r.nr_pages for r in batch)
    return pages


def _same_exe(pid: int, path: str) -> bool:
    try:
        a, b = os.stat(f"/proc/{pid}/exe"), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def build_mm(task: TaskCtl, ctx: OpenContext) -> int:
    """Replace the task's address space by the dumped one. Returns the number of pages read."""
    mm = task.plan.mm
    areas = teardown(task)
    fault_point("restore-mm")
    move_vdso(task, mm, areas)
    pages = build_vmas(task, mm, ctx)
    log.debug(f"task {task.pid}: {len(mm.vmas)} VMAs, {pages} pages read")
    return pages


def install_core(task: TaskCtl, ctx: OpenContext) -> int:
    """The part of a task's state this backend owns: memory and sigactions (registers come last)."""
    from ..signals import install_sigactions

    pages = build_mm(task, ctx)
    install_sigactions(task)
    return pages


def finish_leader(task: TaskCtl) -> None:
    """The leader's last injected syscall unmaps the trampoline it runs from; at that syscall's exit
    stop it gets its dumped registers instead of returning to the trampoline."""
    from ...arch import x86
    from ...linux import ptrace
    from ..threads import final_regs

    leader = task.plan.leader
    task.sys(NR.munmap, task.tramp, TRAMPOLINE_SIZE, what="unmap trampoline")
    ptrace.setregs(task.pid, final_regs(leader))  # at the munmap's syscall-exit stop
    template = ptrace.get_xstate(task.pid)
    ptrace.set_xstate(task.pid, x86.xsave_from_image(leader.core.thread_info.fpregs, template))


def available() -> bool:
    return os.path.exists("/proc/self/maps")
