# SPDX-License-Identifier: MIT
"""The address space: mm-<pid>.img (every VMA, mm boundaries, auxv, exe) as CRIU 4.2.1 writes it.

Mirror of restore/mm.py. VMAs come from /proc/PID/smaps with CRIU's classification (proc_parse.c):
status bits from the mapping's name and backing file (/proc/PID/map_files), MAP_* flags and madvise
bits from VmFlags, fdflags for file mappings. Files behind mappings get files.img entries here
(shmem-backed ones become memfds, their contents dumped at once, as CRIU does); the [vvar] and
[vvar_vclock] areas are one VMA. brk, dumpable and the THP setting are asked inside the task.
"""

from __future__ import annotations

import os
import stat
import struct

from .. import vma as V
from ..errors import SpiceError
from ..images import codec
from ..images.lite import Message
from ..linux.syscalls import NR
from . import proc
from .files import O_PATH, RegParams, special_file
from .intask import Batch

TYPE_CHECKING = False  # typing costs ~10 ms of start-up; annotations are strings
if TYPE_CHECKING:
    from collections.abc import Callable

    from .run import DumpContext

PR_GET_DUMPABLE, PR_GET_THP_DISABLE = 3, 42
MAP_LOCKED, MAP_HUGETLB = 0x2000, 0x40000
O_RDONLY, O_WRONLY, O_RDWR = 0, 1, 2
DEVZERO = os.makedev(1, 5)
#: VmFlags -> mmap flag
_VM_MAP = {"gd": V.MAP_GROWSDOWN, "lo": MAP_LOCKED, "nr": V.MAP_NORESERVE, "ht": MAP_HUGETLB}
#: VmFlags -> madvise advice whose bit goes into vma_entry.madv
_VM_MADV = {"sr": 2, "rr": 1, "dc": 10, "dd": 16, "mg": 12, "hg": 14, "nh": 15}


class MmInTask:
    __slots__ = ("brk", "dumpable", "thp_disabled")

    def __init__(self, brk: int = 0, dumpable: int = 0, thp_disabled: bool = False) -> None:
        self.brk, self.dumpable, self.thp_disabled = brk, dumpable, thp_disabled


def ask_in_task(b: Batch) -> Callable[[], MmInTask]:
    """brk(0), prctl(PR_GET_DUMPABLE) and prctl(PR_GET_THP_DISABLE) inside the task."""
    calls = (b.call(NR.brk, 0), b.call(NR.prctl, PR_GET_DUMPABLE, 0, 0, 0, 0),
             b.call(NR.prctl, PR_GET_THP_DISABLE, 0, 0, 0, 0))

    def answer() -> MmInTask:
        brk, dumpable, thp = (b.check(i) for i in calls)
        return MmInTask(brk=brk, dumpable=dumpable, thp_disabled=bool(thp))

    return answer


def _merge_vvar(lines: list[proc.MapLine]) -> list[proc.MapLine]:
    """CRIU 4.2 treats [vvar] plus the [vvar_vclock] right after it as one VVAR area."""
    out: list[proc.MapLine] = []
    for ml in lines:
        if ml.path == "[vvar_vclock]" and out and out[-1].path == "[vvar]" and out[-1].end == ml.start:
            out[-1].end = ml.end
            continue
        out.append(ml)
    return out


def collect_vmas(ctx: DumpContext, pid: int) -> list[Message]:
    """Every VMA of the task as a vma_entry; file-backed ones get their file objects dumped."""
    cls = codec.pb("vma_entry", lite=True)
    out: list[Message] = []
    prev: tuple[tuple[int, int, int], int, int] | None = None  # the last file VMA: dev:ino, status, shmid
    for ml in _merge_vvar(proc.smaps(pid)):
        e = cls(start=ml.start, end=ml.end, pgoff=ml.pgoff, shmid=0, fd=-1)
        e.prot = (V.PROT_READ if ml.perms[0] == "r" else 0) | (V.PROT_WRITE if ml.perms[1] == "w" else 0) | \
                 (V.PROT_EXEC if ml.perms[2] == "x" else 0)
        e.flags = V.MAP_SHARED if ml.perms[3] == "s" else V.MAP_PRIVATE
        madv = 0
        for tok in ml.vmflags:
            e.flags |= _VM_MAP.get(tok, 0)
            if tok in _VM_MADV:
                madv |= 1 << _VM_MADV[tok]
            if tok in ("io", "pf") and ml.path not in ("[vvar]",):
                raise SpiceError("dump", f"task {pid}: unsupported mapping 0x{ml.start:x}-0x{ml.end:x} {ml.path} "
                                         "(VM_IO/VM_PFNMAP)")
        if madv:
            e.madv = madv
        where = f"task {pid}: mapping 0x{ml.start:x}-0x{ml.end:x} {ml.path}".rstrip()
        key = (ml.dev_major, ml.dev_minor, ml.inode)
        if ml.path == "[vsyscall]":
            e.status = V.VMA_AREA_VSYSCALL
        elif ml.path == "[vdso]":
            e.status = V.VMA_AREA_REGULAR | (V.VMA_AREA_VDSO if e.prot & 5 == 5 else 0)
        elif ml.path == "[vvar]":
            e.status = V.VMA_AREA_REGULAR | (V.VMA_AREA_VVAR if e.prot & 1 else 0)
        elif ml.path == "[heap]":
            e.status = V.VMA_AREA_REGULAR | V.VMA_AREA_HEAP
        elif ml.path == "[uprobes]":
            raise SpiceError("dump", f"{where}: uprobes area: not supported")
        else:
            e.status = V.VMA_AREA_REGULAR
        if ml.inode == 0 and ml.dev_major == 0 and ml.dev_minor == 0:
            # no file: anonymous memory (vdso, vvar, vsyscall, heap and stack included)
            e.status |= V.VMA_ANON_SHARED if e.flags & V.MAP_SHARED else V.VMA_ANON_PRIVATE
            e.flags |= V.MAP_ANONYMOUS
            prev = None
        elif prev is not None and prev[0] == key:
            # CRIU "borrows" the file of the previous VMA when dev:ino are equal
            e.status |= prev[1]
            e.shmid = prev[2]
            e.fdflags = _fdflags(pid, ml)
        else:
            status, shmid = _file_vma(ctx, pid, ml, e, where)
            e.status |= status
            e.shmid = shmid
            e.fdflags = _fdflags(pid, ml)
            prev = (key, status, shmid)
        if e.status & V.VMA_AREA_AIORING:
            raise SpiceError("dump", f"{where}: AIO ring: not supported")
        out.append(e)
    return out


def _fdflags(pid: int, ml: proc.MapLine) -> int:
    """How the mapped file was opened: the map_files link's mode mirrors the file's FMODE_READ/WRITE
    (CRIU's vma_get_mapfile_flags)."""
    try:
        mode = os.lstat(f"/proc/{pid}/map_files/{ml.start:x}-{ml.end:x}").st_mode & 0o600
    except FileNotFoundError:
        return O_RDONLY
    return {0o200: O_WRONLY, 0o400: O_RDONLY, 0o600: O_RDWR}.get(mode, O_RDONLY)


def _file_vma(ctx: DumpContext, pid: int, ml: proc.MapLine, e: Message, where: str) -> tuple[int, int]:
    """Status bits and shmid (file id) of a file-backed VMA; dumps the file (or memfd) on first use."""
    from . import shmem

    path = f"/proc/{pid}/map_files/{ml.start:x}-{ml.end:x}"
    try:
        fd = os.open(path, (O_RDONLY if ml.dev_major == 0 else O_PATH) | os.O_CLOEXEC)
    except FileNotFoundError:
        # a mapping without a file after all
        return (V.VMA_ANON_SHARED if e.flags & V.MAP_SHARED else V.VMA_ANON_PRIVATE), 0
    except OSError as ex:
        if ex.errno == 6:  # ENXIO: a socket or an AIO ring
            st = os.stat(path)
            if stat.S_ISSOCK(st.st_mode):
                raise SpiceError("dump", f"{where}: packet socket ring mapping: not supported") from None
            if ml.path.startswith("/[aio]"):
                raise SpiceError("dump", f"{where}: AIO ring: not supported") from None
        raise SpiceError("dump", f"{where}: can't open its file: {ex.strerror}") from None
    try:
        st = os.fstat(fd)
        if st.st_dev == ctx.shmem_dev:
            if ml.path.startswith("/SYSV"):
                raise SpiceError("dump", f"{where}: SysV IPC shared memory mapping (the task doesn't live in "
                                         "its own IPC namespace): not supported")
            status = V.VMA_AREA_MEMFD | (V.VMA_FILE_SHARED if e.flags & V.MAP_SHARED else V.VMA_FILE_PRIVATE)
            fid, new = ctx.files.special(st)
            if new:
                shmem.memfd_file(ctx, fid, fd, os.readlink(f"/proc/self/fd/{fd}"), st, RegParams())
            return status, fid
        if not (stat.S_ISREG(st.st_mode) or (stat.S_ISCHR(st.st_mode) and st.st_rdev == DEVZERO)):
            raise SpiceError("dump", f"{where}: can't handle non-regular mapping")
        status = V.VMA_FILE_SHARED if e.flags & V.MAP_SHARED else V.VMA_FILE_PRIVATE
        return status, special_file(ctx, fd, where, st)
    finally:
        os.close(fd)


def _auxv(pid: int) -> list[int]:
    with open(f"/proc/{pid}/auxv", "rb") as f:
        raw = f.read()
    words = list(struct.unpack(f"<{len(raw) // 8}Q", raw[: len(raw) // 8 * 8]))
    while len(words) >= 2 and words[-2:] == [0, 0]:  # CRIU stores the vector without its AT_NULL pair
        words = words[:-2]
    return words


def mm_entry(ctx: DumpContext, pid: int, st: proc.Stat, vmas: list[Message], it: MmInTask) -> Message:
    """mm-<pid>.img's entry (the exe link is dumped now, after the fds, as in CRIU)."""
    m = codec.pb("mm_entry", lite=True)(
        mm_start_code=st.start_code, mm_end_code=st.end_code, mm_start_data=st.start_data,
        mm_end_data=st.end_data, mm_start_stack=st.start_stack, mm_start_brk=st.start_brk, mm_brk=it.brk,
        mm_arg_start=st.arg_start, mm_arg_end=st.arg_end, mm_env_start=st.env_start, mm_env_end=st.env_end,
        dumpable=it.dumpable, thp_disabled=it.thp_disabled,
    )
    m.mm_saved_auxv.extend(_auxv(pid))
    fd = os.open(f"/proc/{pid}/exe", O_PATH | os.O_CLOEXEC)
    try:
        m.exe_file_id = special_file(ctx, fd, f"task {pid}: exe")
    finally:
        os.close(fd)
    m.vmas.extend(vmas)
    return m
