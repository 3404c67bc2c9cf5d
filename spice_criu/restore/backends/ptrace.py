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
from ..files import OpenContext, pull_fd
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
    pos = 0
    for lo, hi in [*keep, (task_size(maps), task_size(maps))]:
        if lo > pos and pos < task_size(maps):
            task.sys(NR.munmap, pos, min(lo, task_size(maps)) - pos, what=f"munmap 0x{pos:x}")
        pos = max(pos, hi)
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
    staged = []
    for old, size, new in moves:
        task.sys(NR.mremap, old, size, size, MREMAP_MAYMOVE | MREMAP_FIXED, spot, what="mremap vdso (stage)")
        staged.append((spot, size, new))
        spot += size
    for old, size, new in staged:
        task.sys(NR.mremap, old, size, size, MREMAP_MAYMOVE | MREMAP_FIXED, new, what="mremap vdso")


def _open_in_task(task: TaskCtl, path: str, flags: int, cache: dict[tuple[str, int], int]) -> int:
    key = (path, flags)
    fd = cache.get(key)
    if fd is None:
        fd = task.sys(NR.openat, -100, task.put_str(path), flags | O_CLOEXEC, 0, what=f"open {path}")
        cache[key] = fd
    return fd


def _map_flags(v: VmaPlan) -> int:
    return (v.flags & V.MAP_RESTORABLE) | V.MAP_FIXED


def map_vmas(task: TaskCtl, mm: MmPlan, ctx: OpenContext) -> list[VmaPlan]:
    """mmap every VMA (writable for now where page data must still be read in). Returns those whose
    protection must be tightened afterwards."""
    opened: dict[tuple[str, int], int] = {}
    shm_fds: dict[int, int] = {}
    fixups = []
    try:
        for v in mm.vmas:
            if v.kind in (VDSO, VVAR, VSYSCALL):
                continue
            prot = v.prot | (V.PROT_READ | V.PROT_WRITE if v.runs else 0)
            if v.kind == ANON:
                fd, off = -1, 0
            elif v.kind in (FILE_PRIVATE, FILE_SHARED):
                writable = v.kind == FILE_SHARED and v.prot & V.PROT_WRITE
                mode = O_RDWR if writable or (v.open_flags & 3) == O_RDWR else O_RDONLY
                fd, off = _open_in_task(task, ctx.path(v.path or ""), mode, opened), v.pgoff
            elif v.kind in (SHMEM, MEMFD_PRIVATE):
                assert v.shmem is not None
                fd = shm_fds.get(v.shmem.shmid)
                if fd is None:
                    fd = shm_fds[v.shmem.shmid] = pull_fd(task, shmem_fd(ctx, v.shmem))
                off = v.pgoff
            else:
                raise SpiceError("restore", f"task {task.pid}: VMA kind {v.kind} not supported")
            flags = _map_flags(v) if v.kind != ANON else _map_flags(v) | V.MAP_ANONYMOUS
            got = task.sys(NR.mmap, v.start, v.size, prot, flags, fd, off, what=f"mmap 0x{v.start:x}")
            if got != v.start:
                raise SpiceError("restore", f"task {task.pid}: VMA 0x{v.start:x} landed at 0x{got:x}")
            if prot != v.prot:
                fixups.append(v)
            task.reset_scratch()
    finally:
        for fd in [*opened.values(), *shm_fds.values()]:
            task.sys(NR.close, fd, what="close")
    return fixups


def read_pages(task: TaskCtl, mm: MmPlan) -> int:
    """preadv() every private page range from its pages-N.img, inside the task."""
    by_file: dict[str, list] = {}
    for r in mm.private_runs():
        by_file.setdefault(str(r.pages_file), []).append(r)
    total = 0
    for path, runs in by_file.items():
        runs.sort(key=lambda r: r.offset)
        fd = task.sys(NR.openat, -100, task.put_str(path), O_RDONLY | O_CLOEXEC, 0, what=f"open {path}")
        task.reset_scratch()
        try:
            i = 0
            while i < len(runs):
                batch = [runs[i]]
                while (
                    len(batch) < IOV_MAX
                    and i + len(batch) < len(runs)
                    and runs[i + len(batch)].offset == batch[-1].offset + batch[-1].size
                ):
                    batch.append(runs[i + len(batch)])
                i += len(batch)
                total += _preadv_all(task, fd, batch, path)
        finally:
            task.sys(NR.close, fd, what="close")
    return total // V.PAGE_SIZE


def _preadv_all(task: TaskCtl, fd: int, batch: list, path: str) -> int:
    want = sum(r.size for r in batch)
    iov = task.put(b"".join(struct.pack("<QQ", r.vaddr, r.size) for r in batch))
    got = task.sys(NR.preadv, fd, iov, len(batch), batch[0].offset, 0, what=f"preadv {path}")
    task.reset_scratch()
    if got == want:
        return got
    # a short read (signal, huge request): finish range by range
    done = got
    for r in batch:
        lo = max(0, done - (r.offset - batch[0].offset))
        if lo >= r.size:
            continue
        while lo < r.size:
            n = task.sys(NR.pread64, fd, r.vaddr + lo, r.size - lo, r.offset + lo, what=f"pread {path}")
            if n <= 0:
                raise SpiceError("restore", f"{path}: short read at offset {r.offset + lo}")
            lo += n
    return want


def finish_vmas(task: TaskCtl, fixups: list[VmaPlan], mm: MmPlan) -> None:
    for v in fixups:
        task.sys(NR.mprotect, v.start, v.size, v.prot, what=f"mprotect 0x{v.start:x}")
    for v in mm.vmas:
        if v.madv and v.kind not in (VDSO, VVAR, VSYSCALL):
            for adv in MADV_REAPPLY:
                if v.madv & (1 << adv):
                    task.sys(NR.madvise, v.start, v.size, adv, what=f"madvise({adv}) 0x{v.start:x}")


def _same_exe(pid: int, path: str) -> bool:
    try:
        a, b = os.stat(f"/proc/{pid}/exe"), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def set_mm_fields(task: TaskCtl, mm: MmPlan, ctx: OpenContext) -> None:
    """PR_SET_MM_MAP: code/data/brk/stack/arg/env boundaries, auxv, and the exe file (left alone
    when it already is the right file: the kernel refuses to swap an exe that is still mapped)."""
    path = ctx.path(mm.exe_path)
    exe = -1
    if not _same_exe(task.pid, path):
        exe = task.sys(NR.openat, -100, task.put_str(path), O_RDONLY | O_CLOEXEC, 0, what=f"open exe {mm.exe_path}")
    try:
        auxv = struct.pack(f"<{len(mm.auxv)}Q", *mm.auxv)
        auxv_ptr = task.put(auxv)
        m = struct.pack(
            "<11QQII",
            mm.start_code, mm.end_code, mm.start_data, mm.end_data, mm.start_brk, mm.brk, mm.start_stack,
            mm.arg_start, mm.arg_end, mm.env_start, mm.env_end, auxv_ptr, len(auxv), exe & 0xFFFFFFFF,
        )
        task.sys(NR.prctl, PR_SET_MM, PR_SET_MM_MAP, task.put(m), len(m), 0, what="prctl(PR_SET_MM_MAP)")
    finally:
        if exe >= 0:
            task.sys(NR.close, exe, what="close")
        task.reset_scratch()


def build_mm(task: TaskCtl, ctx: OpenContext) -> int:
    """Replace the task's address space by the dumped one. Returns the number of pages read."""
    mm = task.plan.mm
    areas = teardown(task)
    fault_point("restore-mm")
    move_vdso(task, mm, areas)
    fixups = map_vmas(task, mm, ctx)
    pages = read_pages(task, mm)
    finish_vmas(task, fixups, mm)
    set_mm_fields(task, mm, ctx)
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
