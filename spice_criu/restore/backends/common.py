# SPDX-License-Identifier: MIT
"""What both backends do the same way before a task's address space is built.

The running kernel's own areas ([vdso], [vvar]) are found and mremapped to the image's addresses;
every file the new address space needs (mapped files, pages images, the exe, the shared-memory
memfds) is opened inside the task in one batch, the memfds pulled from the restorer with
pidfd_getfd in a second one.
"""

from __future__ import annotations

from ...errors import SpiceError
from ...linux.syscalls import NR
from ...record import Factory, Record
from ..files import OpenContext
from ..mm import FILE_PRIVATE, FILE_SHARED, MEMFD_PRIVATE, SHMEM, VDSO, VSYSCALL, VVAR, MmPlan, VmaPlan
from ..task import TRAMPOLINE_SIZE, TaskCtl, find_hole, restorer_pidfd_call

MREMAP_MAYMOVE, MREMAP_FIXED = 1, 2
O_RDONLY, O_RDWR, O_CLOEXEC = 0, 2, 0o2000000
KERNEL_AREAS = ("[vdso]", "[vvar]", "[vvar_vclock]", "[vsyscall]")
#: madvise advice numbers (bits of vma_entry.madv) that restore re-applies
MADV_REAPPLY = (1, 2, 10, 11, 12, 14, 15, 16, 18)


def kernel_areas(maps: list[tuple[int, int, str]]) -> dict[str, tuple[int, int]]:
    """The kernel's own areas of a task by name, from its parsed /proc/PID/maps."""
    return {n: (lo, hi) for lo, hi, n in maps if n in KERNEL_AREAS}


def queue_vdso_moves(b, task: TaskCtl, mm: MmPlan, areas: dict[str, tuple[int, int]]) -> bool:
    """Queue on batch b the mremaps that move the running kernel's [vvar](+[vvar_vclock]) and
    [vdso] to where the image had them; False when nothing has to move."""
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
        return False
    # move through a free spot first: a target may overlap an area that has not moved yet
    avoid = [(v.start, v.end) for v in mm.vmas] + list(areas.values()) + [(task.tramp, task.tramp + TRAMPOLINE_SIZE)]
    spot = find_hole(avoid, sum(size for _, size, _ in moves))
    staged = []
    for old, size, new in moves:
        b.add(NR.mremap, old, size, size, MREMAP_MAYMOVE | MREMAP_FIXED, spot, what="mremap vdso (stage)")
        staged.append((spot, size, new))
        spot += size
    for old, size, new in staged:
        b.add(NR.mremap, old, size, size, MREMAP_MAYMOVE | MREMAP_FIXED, new, what="mremap vdso")
    return True


def queue_madvise(b, mm: MmPlan) -> None:
    """Re-apply the dumped madvise() advice (vma_entry.madv) of every VMA."""
    for v in mm.vmas:
        if v.madv and v.kind not in (VDSO, VVAR, VSYSCALL):
            for adv in MADV_REAPPLY:
                if v.madv & (1 << adv):
                    b.add(NR.madvise, v.start, v.size, adv, what=f"madvise({adv}) 0x{v.start:x}")


def file_mode(v: VmaPlan) -> int:
    """How a mapped file is opened: read-write for writable shared mappings (and if dumped so)."""
    writable = v.kind == FILE_SHARED and v.prot & 2  # PROT_WRITE
    return O_RDWR if writable or (v.open_flags & 3) == O_RDWR else O_RDONLY


class MmFiles(Record):
    """The fds, inside the task, of everything its new address space is built from."""

    fds: dict[tuple[str, int], int]  # (path, open mode) -> fd: mapped files, pages images, exe, extras
    mapped: dict[int, int]  # VMA start -> fd of its file (file-backed VMAs)
    shm: dict[int, int]  # shmid -> fd of the shared-memory memfd
    exe_path: str
    exe: int  # fd of the new exe
    temp: list[int] = Factory(list)  # every fd above: close them when done

    def fd(self, path: str, mode: int = O_RDONLY) -> int:
        return self.fds[(path, mode)]


def open_mm_files(task: TaskCtl, mm: MmPlan, ctx: OpenContext, extra: tuple[tuple[str, int], ...] = (),
                  b=None) -> MmFiles:
    """Open (in the task, O_CLOEXEC) every file the address space needs, plus `extra` (path, mode).

    Batch 1 (b, if given, may already hold other calls): the files and a pidfd of the restorer (if
    there is shared memory); batch 2: the memfds, pulled from the restorer with pidfd_getfd."""
    b = b if b is not None else task.batch()
    slots: dict[tuple[str, int], int] = {}
    dirfd, host_root = -100, ctx.cache.get("mntns", {}).get("host_root")  # AT_FDCWD
    if host_root is not None:  # the task is in the tree's own mount namespace: it opens our paths from our root
        from ..files import pull_fd

        dirfd = pull_fd(task, host_root)

    def want(path: str, mode: int) -> None:
        if (path, mode) not in slots:
            name = task.put_str(path if dirfd == -100 else path.lstrip("/") or ".")
            slots[(path, mode)] = b.add(NR.openat, dirfd, name, mode | O_CLOEXEC, 0, what=f"open {path}")

    mapped = {v.start: (ctx.source_path(v.file_id, v.path or ""), file_mode(v))
              for v in mm.vmas if v.kind in (FILE_PRIVATE, FILE_SHARED)}
    for key in mapped.values():
        want(*key)
    for path in sorted({str(r.pages_file) for r in mm.private_runs()}):
        want(path, O_RDONLY)
    exe_path = ctx.source_path(mm.exe_file_id, mm.exe_path)
    want(exe_path, O_RDONLY)  # the task runs the stub: its exe is always replaced
    for path, mode in extra:
        want(path, mode)
    shms = {v.shmem.shmid: v.shmem for v in mm.vmas if v.kind in (SHMEM, MEMFD_PRIVATE) and v.shmem}
    pidfd_slot = b.add(*restorer_pidfd_call(), what="pidfd of the restorer") if shms else None
    res = b.run()
    task.reset_scratch()
    fds = {key: res[i] for key, i in slots.items()}
    out = MmFiles(fds, {start: fds[key] for start, key in mapped.items()}, {}, exe_path, fds[(exe_path, O_RDONLY)],
                  list(fds.values()) + ([dirfd] if dirfd != -100 else []))
    if shms:
        from ..shmem import shmem_fd  # (and fcntl): only for shared memory

        pidfd = res[pidfd_slot]
        b = task.batch()
        idx = {sid: b.add(NR.pidfd_getfd, pidfd, shmem_fd(ctx, sh), 0, what=f"pidfd_getfd shmem {sid}")
               for sid, sh in shms.items()}
        b.add(NR.close, pidfd, what="close pidfd")
        res = b.run()
        task.reset_scratch()
        out.shm = {sid: res[i] for sid, i in idx.items()}
        out.temp += list(out.shm.values())
    return out
