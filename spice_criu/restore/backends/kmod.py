# SPDX-License-Identifier: MIT
"""The kernel-module backend: one SPICE_IOC_RESTORE call on /dev/spice installs a task's address
space (private pages mapped from the page cache of pages-N.img, the working set prefaulted), its
mm fields, auxv, exe, sigactions, alternate stack, robust list, clear-tid address, FPU state and
registers.

The task is the restorer's ptrace-stopped stub (fds and fs already installed, single-threaded). We
move the running kernel's vDSO/vvar to the dumped addresses (the module keeps them, and the
trampoline page we inject through), open every file the request names inside the task, write the
request into the task's scratch area (or a temporary mapping the module's teardown removes) and
inject the ioctl. It returns into the restored registers; at its syscall-exit stop the restorer
takes the task back for what the module leaves to userspace (threads, per-thread state, timers,
creds...), and finish_leader() puts the restored registers back after the last injected syscall.
The FPU state the module installed survives those syscalls untouched.

See kmod/README.md for the ABI (kmod/include/uapi/spice.h) and what the module does not install.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import time

from ... import vma as V
from ...arch import x86
from ...errors import SpiceError
from ...faults import fault_point
from ...inject import TaskGone
from ...linux import ptrace
from ...linux.syscalls import NR
from ...log import log
from ..files import OpenContext
from ..mm import ANON, FILE_PRIVATE, FILE_SHARED, MEMFD_PRIVATE, VDSO, VSYSCALL, VVAR, MmPlan, VmaPlan
from ..task import SCRATCH_PAGES, TRAMPOLINE_SIZE, TaskCtl, parse_maps
from . import DEVICE
from . import ptrace as ptrace_backend
from .common import (
    O_RDONLY,
    O_RDWR,
    MmFiles,
    kernel_areas,
    open_mm_files,
    queue_madvise,
    queue_vdso_moves,
)

name = "kmod"
STATS_DIR = "/sys/class/misc/spice/stats"

# --- the ABI (kmod/include/uapi/spice.h, version 1); sizes are checked against SPICE_IOC_VERSION ---
ABI_VERSION = 1
REQ_MAGIC = 0x51455253  # "SREQ"
VERSION_FMT = struct.Struct("<IIIIQQIIIIII4Q")  # struct spice_version, 88 bytes
TABLE = struct.Struct("<IIII")  # offset, count, entry_size, reserved
FILE = struct.Struct("<iIII")  # fd, role, flags, reserved
VMA = struct.Struct("<QQQIIIiII")  # start, end, pgoff, prot, flags, kind, file, vflags, reserved
SOURCE = struct.Struct("<QQQII")  # start, nr_pages, offset, file, reserved
WS = struct.Struct("<QQII")  # start, nr_pages, flags, reserved
RANGE = struct.Struct("<QQ")
MM_FMT = struct.Struct("<11QIi64Q")  # struct spice_mm, 608 bytes
TASK_HEAD = struct.Struct("<QQQQIIQQQQII")  # struct spice_task up to act[], 80 bytes
SIGACTION = struct.Struct("<4Q")
REGS = struct.Struct("<27Q")
HDR_HEAD = struct.Struct("<IIIIQII")  # magic, version, hdr_size, total_size, flags, prefault, reserved0
HDR_SIZE = 3144
ERR_OFFSET = 3136  # err_table, err_index
TABLE_NAMES = ("files", "vmas", "sources", "ws", "keep", "xsave")

FILE_PAGES, FILE_MAP, FILE_MEMFD, FILE_EXE = 1, 2, 3, 4
FILEF_CLOSE = 1
VMA_ANON_PRIVATE, VMA_ANON_SHARED, VMA_FILE_PRIVATE, VMA_FILE_SHARED = 1, 2, 3, 4
VMAF_COPY = 1
WS_WRITE = 1
RF_DRY_RUN, RF_REGS, RF_FPU, RF_SIGMASK, RF_MM = 1, 2, 4, 8, 16
PREFAULT_NONE, PREFAULT_WS, PREFAULT_ALL = 0, 1, 2
FEAT_PAGECACHE, FEAT_COPY, FEAT_PREFAULT, FEAT_REGS, FEAT_FPU, FEAT_EXE = (1 << i for i in range(6))
FEATURES_NEEDED = FEAT_PAGECACHE | FEAT_COPY | FEAT_PREFAULT | FEAT_REGS | FEAT_FPU | FEAT_EXE
ERR_HDR, ERR_FILES, ERR_VMAS, ERR_SOURCES, ERR_WS, ERR_KEEP, ERR_XSAVE, ERR_MM, ERR_TASK, ERR_REGS, ERR_CALLER = (
    range(1, 12))
NO_INDEX = 0xFFFFFFFF
NSIG = 64
AUXV_WORDS = 64
SS_DISABLE, SS_ONSTACK = 2, 1
MADV_WIPEONFORK = 18
XFEATURE_FPSSE = 3
XSAVE_MIN = 576  # legacy area + xsave header


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (0xBD << 8) | nr


IOC_VERSION = _ioc(2, 1, VERSION_FMT.size)
IOC_RESTORE = _ioc(3, 2, HDR_SIZE)
assert MM_FMT.size == 608 and TASK_HEAD.size + NSIG * SIGACTION.size == 2128 and REGS.size == 216
assert HDR_HEAD.size + 6 * TABLE.size + 608 + 2128 + 216 + 7 * 8 + 8 == HDR_SIZE


# --- availability ------------------------------------------------------------------------------------

_probe: tuple[bool, str] | None = None


def probe() -> tuple[bool, str]:
    """(usable, why not): /dev/spice answers SPICE_IOC_VERSION with this ABI and its features."""
    global _probe
    if _probe is not None:
        return _probe
    try:
        fd = os.open(DEVICE, os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        why = "module not loaded" if e.errno == errno.ENOENT else e.strerror
        _probe = (False, f"{DEVICE}: {why}")
        return _probe
    try:
        buf = bytearray(VERSION_FMT.size)
        fcntl.ioctl(fd, IOC_VERSION, buf, True)
        abi, size, hdr, _, _, feats, *_ = VERSION_FMT.unpack(buf)
    except OSError as e:
        _probe = (False, f"{DEVICE}: SPICE_IOC_VERSION failed: {e.strerror}")
        return _probe
    finally:
        os.close(fd)
    if abi != ABI_VERSION or size != VERSION_FMT.size or hdr != HDR_SIZE:
        _probe = (False, f"{DEVICE} speaks ABI {abi} (version size {size}, request header {hdr}); "
                         f"this spice needs ABI {ABI_VERSION} ({VERSION_FMT.size}, {HDR_SIZE})")
    elif feats & FEATURES_NEEDED != FEATURES_NEEDED:
        _probe = (False, f"{DEVICE} lacks features 0x{FEATURES_NEEDED & ~feats:x}")
    else:
        _probe = (True, "")
    return _probe


def available() -> bool:
    return probe()[0]


def unavailable_reason() -> str:
    return probe()[1] or "available"


# --- the request -------------------------------------------------------------------------------------


def is_copy_vma(v: VmaPlan, mm: MmPlan) -> bool:
    """VMAs whose dumped pages are copied into anonymous memory instead of mapped from the pages
    image. Page-cache mode is for anonymous private memory (heap, arenas, anonymous mmaps: the
    bulk of a runtime). Copied: the COW pages of private file mappings (so /proc/PID/maps, and a
    later dump, still see the library or file there, as after a CRIU restore), the stack
    (MAP_GROWSDOWN) and argv/env (/proc/PID/cmdline reads only anonymous memory), VMAs advised
    MADV_WIPEONFORK (which needs anonymous memory), and everything with SPICE_KMOD_MODE=copy."""
    if v.kind in (FILE_PRIVATE, MEMFD_PRIVATE):
        return True
    if v.kind != ANON:
        return False
    if os.environ.get("SPICE_KMOD_MODE") == "copy":
        return True
    if v.flags & V.MAP_GROWSDOWN or v.madv & (1 << MADV_WIPEONFORK):
        return True
    return any(v.start < hi and lo < v.end for lo, hi in ((mm.arg_start, mm.arg_end), (mm.env_start, mm.env_end)))


def _pieces(v: VmaPlan) -> int:
    """Pages-image mappings a page-cache-mode VMA needs (runs continuing in the file are one)."""
    n, end, off = 0, -1, -1
    for r in v.runs:
        if r.pages_file is None:
            continue
        if r.vaddr != end or r.offset != off:
            n += 1
        end, off = r.end, r.offset + r.size
    return n


def copy_vmas(mm: MmPlan) -> set[int]:
    """Start addresses of the VMAs built in copy mode (is_copy_vma), plus, when page-cache mode
    would split the address space into more kernel VMAs than vm.max_map_count allows (each
    pages-image mapping in an anonymous VMA adds up to two), the most fragmented VMAs."""
    vmas = request_vmas(mm)
    out = {v.start for v in vmas if is_copy_vma(v, mm)}
    try:
        with open("/proc/sys/vm/max_map_count") as f:
            budget = int(f.read()) // 2  # room for the restored process's own later mappings
    except (OSError, ValueError):
        budget = 32768
    cost = {v.start: 2 * _pieces(v) for v in vmas if v.start not in out and v.runs}
    total = len(vmas) + sum(cost.values())
    for start, c in sorted(cost.items(), key=lambda kv: -kv[1]):
        if total <= budget:
            break
        out.add(start)
        total -= c
    return out


def request_vmas(mm: MmPlan) -> list[VmaPlan]:
    """The VMAs the module builds (the kernel's own areas are kept, not built)."""
    return [v for v in mm.vmas if v.kind not in (VDSO, VVAR, VSYSCALL)]


class Request:
    """A SPICE_IOC_RESTORE request being assembled, with a description of every table entry so a
    rejection (err_table, err_index) can name the object."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.files: list[tuple[int, int, int]] = []  # fd, role, flags
        self.vmas: list[bytes] = []
        self.sources: list[tuple[int, int, int, int]] = []  # start, nr_pages, offset, file index
        self.ws: list[tuple[int, int, int]] = []  # start, nr_pages, flags
        self.keep: list[tuple[int, int]] = []
        self.xsave = b""
        self.mm = b"\0" * MM_FMT.size
        self.task = b"\0" * (TASK_HEAD.size + NSIG * SIGACTION.size)
        self.regs = b"\0" * REGS.size
        self.flags = 0
        self.prefault = PREFAULT_NONE
        self.names: dict[int, list[str]] = {t: [] for t in (ERR_FILES, ERR_VMAS, ERR_SOURCES, ERR_WS, ERR_KEEP)}
        self._file_idx: dict[tuple[int, int], int] = {}
        self.closed_by_module: set[int] = set()

    def file(self, fd: int, role: int, what: str) -> int:
        """Index of (fd, role) in files[]; every fd is closed by the module after success, once."""
        key = (fd, role)
        if key not in self._file_idx:
            flags = 0 if fd in self.closed_by_module else FILEF_CLOSE
            self.closed_by_module.add(fd)
            self._file_idx[key] = len(self.files)
            self.files.append((fd, role, flags))
            self.names[ERR_FILES].append(what)
        return self._file_idx[key]

    def pack(self) -> bytes:
        tables = [
            (b"".join(FILE.pack(fd, role, fl, 0) for fd, role, fl in self.files), len(self.files), FILE.size),
            (b"".join(self.vmas), len(self.vmas), VMA.size),
            (b"".join(SOURCE.pack(s, n, off, f, 0) for s, n, off, f in self.sources), len(self.sources),
             SOURCE.size),
            (b"".join(WS.pack(s, n, fl, 0) for s, n, fl in self.ws), len(self.ws), WS.size),
            (b"".join(RANGE.pack(lo, hi) for lo, hi in self.keep), len(self.keep), RANGE.size),
            (self.xsave, len(self.xsave), 1),
        ]
        body, descs, off = [], [], HDR_SIZE
        for data, count, esize in tables:
            if not count:
                descs.append(TABLE.pack(0, 0, 0, 0))
                continue
            descs.append(TABLE.pack(off, count, esize, 0))
            pad = -len(data) % 8
            body.append(data + b"\0" * pad)
            off += len(data) + pad
        hdr = (HDR_HEAD.pack(REQ_MAGIC, ABI_VERSION, HDR_SIZE, off, self.flags, self.prefault, 0)
               + b"".join(descs) + self.mm + self.task + self.regs + b"\0" * (7 * 8 + 8))
        assert len(hdr) == HDR_SIZE
        return hdr + b"".join(body)

    def describe(self, table: int, index: int) -> str:
        """The object a rejection names (err_table, err_index)."""
        pid = self.pid
        if table in self.names:
            names = self.names[table]
            tname = TABLE_NAMES[table - ERR_FILES]
            if index == NO_INDEX:
                return f"the {tname} table ({len(names)} entries)"
            return names[index] if index < len(names) else f"{tname}[{index}]"
        if table == ERR_TASK and index != NO_INDEX and index < NSIG:
            return f"the action of signal {index + 1} (core-{pid}.img)"
        return {
            ERR_HDR: "the request header (prefault policy, flags, sizes)",
            ERR_XSAVE: f"the FPU/xsave state (core-{pid}.img)",
            ERR_MM: f"the mm fields, auxv or exe (mm-{pid}.img)",
            ERR_TASK: f"the signal altstack, robust list or clear-tid address (core-{pid}.img)",
            ERR_REGS: f"the registers (core-{pid}.img)",
            ERR_CALLER: "the calling task (capability, single thread, 64-bit)",
        }.get(table, f"table {table} entry {index}")


def _vma_name(v: VmaPlan) -> str:
    what = v.path or (f"shmem {v.shmem.shmid}" if v.shmem else v.kind)
    return f"VMA 0x{v.start:x}-0x{v.end:x} ({v.kind} {what})"


def _vma_entry(req: Request, v: VmaPlan, copy: bool, files: MmFiles, ctx: OpenContext) -> bytes:
    base = v.flags & (V.MAP_GROWSDOWN | V.MAP_NORESERVE)
    vflags = VMAF_COPY if copy else 0
    if v.kind == ANON:
        if v.flags & V.MAP_SHARED:
            raise SpiceError("restore", f"task {req.pid}: {_vma_name(v)} is shared but not backed by shmem")
        return VMA.pack(v.start, v.end, 0, v.prot, base | V.MAP_PRIVATE | V.MAP_ANONYMOUS, VMA_ANON_PRIVATE, -1,
                        vflags, 0)
    pgoff = v.pgoff // V.PAGE_SIZE
    if v.kind in (FILE_PRIVATE, FILE_SHARED):
        idx = req.file(files.mapped[v.start], FILE_MAP, f"mapped file {ctx.path(v.path or '')}")
        if v.kind == FILE_PRIVATE:
            return VMA.pack(v.start, v.end, pgoff, v.prot, base | V.MAP_PRIVATE, VMA_FILE_PRIVATE, idx, vflags, 0)
        return VMA.pack(v.start, v.end, pgoff, v.prot, base | V.MAP_SHARED, VMA_FILE_SHARED, idx, 0, 0)
    assert v.shmem is not None
    fd = files.shm[v.shmem.shmid]
    what = f"memfd of shmem {v.shmem.shmid} ({v.shmem.name})"
    if v.kind == MEMFD_PRIVATE:
        idx = req.file(fd, FILE_MAP, what)
        return VMA.pack(v.start, v.end, pgoff, v.prot, base | V.MAP_PRIVATE, VMA_FILE_PRIVATE, idx, vflags, 0)
    if v.shmem.memfd:  # a real memfd may be mapped past its end: a file mapping
        idx = req.file(fd, FILE_MAP, what)
        return VMA.pack(v.start, v.end, pgoff, v.prot, base | V.MAP_SHARED, VMA_FILE_SHARED, idx, 0, 0)
    idx = req.file(fd, FILE_MEMFD, what)
    return VMA.pack(v.start, v.end, pgoff, v.prot, base | V.MAP_SHARED | V.MAP_ANONYMOUS, VMA_ANON_SHARED, idx,
                    0, 0)


def _sources(req: Request, vmas: list[VmaPlan], files: MmFiles) -> int:
    """sources[]: the present private pages, merged where address and file offset both continue."""
    out: list[list[int]] = []
    for v in vmas:
        for r in v.runs:
            if r.pages_file is None:
                continue
            idx = req.file(files.fd(str(r.pages_file), O_RDONLY), FILE_PAGES, f"pages image {r.pages_file}")
            last = out[-1] if out else None
            if (last and last[3] == idx and last[0] + last[1] * V.PAGE_SIZE == r.vaddr
                    and last[2] + last[1] * V.PAGE_SIZE == r.offset and last[4] == v.start):
                last[1] += r.nr_pages
            else:
                out.append([r.vaddr, r.nr_pages, r.offset, idx, v.start])
    req.sources = [(s, n, off, f) for s, n, off, f, _ in out]
    req.names[ERR_SOURCES] = [
        f"pages 0x{s:x}-0x{s + n * V.PAGE_SIZE:x} at offset {off} of {req.names[ERR_FILES][f]}"
        for s, n, off, f in req.sources]
    return sum(n for _, n, _, _ in req.sources)


def clip_ws(ranges: list[tuple[int, int, bool]], vmas: list[VmaPlan]) -> list[tuple[int, int, int]]:
    """Working-set ranges cut at VMA boundaries (each ws[] entry lies inside one VMA), outside
    VMAs dropped; sorted, as the module wants them."""
    spans = sorted((v.start, v.end) for v in vmas)
    out: list[tuple[int, int, int]] = []
    for start, nr, write in sorted(ranges):
        end = start + nr * V.PAGE_SIZE
        for lo, hi in spans:
            a, b = max(start, lo), min(end, hi)
            if a < b:
                out.append((a, (b - a) // V.PAGE_SIZE, WS_WRITE if write else 0))
    merged: list[tuple[int, int, int]] = []
    for s, n, f in out:
        if merged and merged[-1][0] + merged[-1][1] * V.PAGE_SIZE > s:
            continue  # overlapping input: keep the first
        merged.append((s, n, f))
    return merged


def _xsave(pid: int, fpregs) -> bytes:
    """The leader's FPU state in NT_X86_XSTATE layout (legacy area + header at least)."""
    template = ptrace.get_xstate(pid) if ptrace.has_xstate(pid) else ptrace.get_fpstate(pid)
    buf = x86.xsave_from_image(fpregs, template)
    if len(buf) < XSAVE_MIN:  # no XSAVE: the legacy area and a header saying FP|SSE
        buf = buf[:512].ljust(512, b"\0") + struct.pack("<QQ", XFEATURE_FPSSE, 0) + b"\0" * 48
    return buf


def _auxv(words: list[int], pid: int) -> list[int]:
    w = list(words)
    while len(w) >= 2 and w[-1] == 0 and w[-2] == 0:
        w = w[:-2]
    w += [0, 0]  # AT_NULL
    if len(w) > AUXV_WORDS:
        raise SpiceError("restore", f"task {pid}: {len(w)} auxv words (mm-{pid}.img), at most {AUXV_WORDS}")
    return w


def _task_fields(pid: int, leader_core, tc) -> bytes:
    from ..signals import sigaction_structs

    ti, tcore = leader_core.thread_info, leader_core.thread_core
    sp = size = 0
    flags = SS_DISABLE
    if tcore.HasField("sas") and not tcore.sas.ss_flags & SS_DISABLE:
        sp, size, flags = tcore.sas.ss_sp, tcore.sas.ss_size, tcore.sas.ss_flags & ~SS_ONSTACK
    rla = tcore.futex_rla
    acts = [b"\0" * SIGACTION.size] * NSIG
    mask = 0
    for sig, raw, _default in sigaction_structs(tc):
        acts[sig - 1] = raw
        mask |= 1 << (sig - 1)
    # rseq stays 0 here: the restorer registers every thread's rseq itself after the call
    head = TASK_HEAD.pack(0, mask, sp, size, flags & 0xFFFFFFFF, 0, ti.clear_tid_addr, rla,
                          (tcore.futex_rla_len or 24) if rla else 0, 0, 0, 0)
    return head + b"".join(acts)


def build_request(task: TaskCtl, files: MmFiles, ctx: OpenContext, keep: list[tuple[int, int]],
                  prefault: int, ws: list[tuple[int, int, bool]] | None) -> tuple[Request, int]:
    """The whole request for one task; returns it and the number of private pages it installs."""
    from ..threads import final_regs

    plan = task.plan
    mm = plan.mm
    req = Request(plan.pid)
    vmas = request_vmas(mm)
    copy = copy_vmas(mm)
    for v in vmas:
        req.vmas.append(_vma_entry(req, v, v.start in copy, files, ctx))
        req.names[ERR_VMAS].append(_vma_name(v))
    pages = _sources(req, vmas, files)
    if ws:
        req.ws = clip_ws(ws, vmas)
        req.names[ERR_WS] = [f"working-set pages 0x{s:x}+{n} (spice-working-set.json)" for s, n, _ in req.ws]
    req.prefault = PREFAULT_WS if req.ws and prefault != PREFAULT_NONE else prefault
    req.keep = keep
    req.names[ERR_KEEP] = [f"kept range 0x{lo:x}-0x{hi:x}" for lo, hi in keep]
    exe = req.file(files.exe, FILE_EXE, f"exe {files.exe_path}")
    auxv = _auxv(mm.auxv, plan.pid)
    req.mm = MM_FMT.pack(mm.start_code, mm.end_code, mm.start_data, mm.end_data, mm.start_brk, mm.brk,
                         mm.start_stack, mm.arg_start, mm.arg_end, mm.env_start, mm.env_end, len(auxv), exe,
                         *(auxv + [0] * (AUXV_WORDS - len(auxv))))
    leader = plan.leader
    req.task = _task_fields(plan.pid, leader.core, plan.tc)
    regs = final_regs(leader)
    words = [getattr(regs, f) & (1 << 64) - 1 for f in x86.GP_FIELDS]
    r = dict(zip(x86.GP_FIELDS, words, strict=True))
    r["fs"] = r["gs"] = 0  # the bases carry the state of a 64-bit task
    req.regs = REGS.pack(*(r[f] for f in x86.GP_FIELDS))
    req.xsave = _xsave(task.pid, leader.core.thread_info.fpregs)
    req.flags = RF_REGS | RF_FPU | RF_MM
    return req, pages


# --- running it --------------------------------------------------------------------------------------


def _keep_ranges(task: TaskCtl, mm: MmPlan) -> list[tuple[int, int]]:
    """What survives the module's teardown: the (moved) vDSO/vvar and the trampoline + scratch."""
    keep = [(v.start, v.end) for v in mm.vmas if v.kind in (VDSO, VVAR)]
    keep.append((task.tramp, task.tramp + TRAMPOLINE_SIZE))
    keep.sort()
    merged: list[tuple[int, int]] = []
    for lo, hi in keep:
        if merged and merged[-1][1] >= lo:
            merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
        else:
            merged.append((lo, hi))
    return merged


def _kernel_reason(pid: int) -> str:
    """The module's log line about a restore it had to kill (best effort)."""
    try:
        fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return ""
    found = ""
    try:
        while True:
            try:
                rec = os.read(fd, 8192).decode(errors="replace")
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno == errno.EPIPE:  # overwritten records: go on reading
                    continue
                break
            msg = rec.split(";", 1)[-1].strip()
            if f"restore of pid {pid} failed" in msg:
                found = msg
    finally:
        os.close(fd)
    return found


class Backend:
    """install_core()/finish_leader() for run.py. strict: --backend kmod (a rejection is an error);
    otherwise (--backend auto) a task whose request the module rejects is restored by the ptrace
    backend instead. record: prefault nothing (--record-working-set)."""

    name = "kmod"

    def __init__(self, strict: bool = True, record: bool = False) -> None:
        self.strict = strict
        self.record = record
        self.fallback: set[int] = set()

    def install_core(self, task: TaskCtl, ctx: OpenContext) -> int:
        t0 = time.monotonic()
        mm = task.plan.mm
        areas = kernel_areas(parse_maps(task.pid))
        fault_point("restore-mm")
        # one batch: the vDSO moves and the opens; the memfds come in a second one if any
        b = task.batch()
        queue_vdso_moves(b, task, mm, areas)
        files = open_mm_files(task, mm, ctx, extra=((DEVICE, O_RDWR),), b=b)
        dev = files.fd(DEVICE, O_RDWR)
        t1 = time.monotonic()
        ws = None
        if not self.record:
            from .. import workingset

            ws = workingset.load(ctx.imgdir, task.plan.pid)
        req, pages = build_request(task, files, ctx, _keep_ranges(task, mm),
                                   PREFAULT_NONE if self.record else PREFAULT_ALL, ws)
        t2 = time.monotonic()
        if not self._restore(task, req, dev):  # rejected (the task is unchanged), --backend auto
            self._close(task, files.temp)
            self.fallback.add(task.pid)
            return ptrace_backend.install_core(task, ctx)
        t3 = time.monotonic()
        # first syscalls after the call: the loop takes its numbers from memory, so a %rax the module
        # sets on the way out (values that do not fit the ioctl's int) cannot disturb it
        b = task.batch()
        for fd in files.temp:  # /dev/spice and whatever the module did not close
            if fd not in req.closed_by_module:
                b.add(NR.close, fd, what="close")
        queue_madvise(b, mm)
        b.run()
        task.reset_scratch()
        if log.level >= 3:
            mode = {PREFAULT_NONE: "none", PREFAULT_WS: f"working set ({len(req.ws)} ranges)", PREFAULT_ALL: "all"}
            log.info(f"task {task.pid}: installed by {DEVICE}: {len(req.vmas)} VMAs, {pages} pages from "
                     f"{len({f for _, _, _, f in req.sources})} pages image(s), prefault {mode[req.prefault]}")
        if log.level >= 4:
            log.debug(f"task {task.pid}: kmod backend ms: vdso+opens {(t1 - t0) * 1e3:.1f}, request "
                      f"{(t2 - t1) * 1e3:.1f} ({len(req.pack())} bytes), call {(t3 - t2) * 1e3:.1f}, "
                      f"closes+madvise {(time.monotonic() - t3) * 1e3:.1f}")
        return pages

    def finish_leader(self, task: TaskCtl) -> None:
        """Like the ptrace backend: the last injected syscall unmaps the trampoline; at its exit stop
        the leader gets its restored registers back (the FPU state is the module's, untouched)."""
        if task.pid in self.fallback:
            ptrace_backend.finish_leader(task)
            return
        from ..threads import final_regs

        task.sys(NR.munmap, task.tramp, TRAMPOLINE_SIZE, what="unmap trampoline")
        ptrace.setregs(task.pid, final_regs(task.plan.leader))

    # -- helpers -------------------------------------------------------------------------------------

    def _close(self, task: TaskCtl, fds: list[int]) -> None:
        b = task.batch()
        for fd in fds:
            b.add(NR.close, fd, what="close")
        b.run()
        task.reset_scratch()

    def _place(self, task: TaskCtl, data: bytes) -> tuple[int, int]:
        """Write the request into the task: (address, size of a temporary mapping or 0)."""
        task.reset_scratch()
        if len(data) + 16 <= SCRATCH_PAGES * V.PAGE_SIZE:
            return task.put(data), 0
        size = -(-len(data) // V.PAGE_SIZE) * V.PAGE_SIZE
        addr = task.sys(NR.mmap, 0, size, V.PROT_READ | V.PROT_WRITE, V.MAP_PRIVATE | V.MAP_ANONYMOUS, -1, 0,
                        what="mmap the request")
        task.remote.write(addr, data)
        return addr, size

    def _rejected(self, task: TaskCtl, req: Request, addr: int, ret: int) -> SpiceError:
        table, index = struct.unpack("<II", task.remote.read(addr + ERR_OFFSET, 8))
        what = req.describe(table, index) if table else "the request"
        return SpiceError("restore", f"task {task.pid}: {DEVICE} rejected {what}: {os.strerror(-ret)}")

    def _restore(self, task: TaskCtl, req: Request, dev: int) -> bool:
        """Inject the ioctl. True: the task is in its restored address space. A rejection leaves it
        exactly as it was (the module guarantees it, so no dry run is needed first): an error, or
        with --backend auto a warning and False (the caller falls back to the ptrace backend)."""
        addr, tmp = self._place(task, req.pack())
        want = REGS.unpack(req.regs)
        ip, sp = want[x86.GP_FIELDS.index("ip")], want[x86.GP_FIELDS.index("sp")]
        before = ptrace.getregs(task.pid)
        try:
            ret = task.remote.syscall(NR.ioctl, dev, IOC_RESTORE, addr)
        except TaskGone:
            reason = _kernel_reason(task.pid)
            raise SpiceError("restore", f"task {task.pid} was killed by {DEVICE} after its old address space "
                                        f"was torn down{': ' + reason if reason else ''}") from None
        now = ptrace.getregs(task.pid)
        if (now.ip, now.sp) != (ip, sp):  # not in the restored context: rejected, the task is unchanged
            err = self._rejected(task, req, addr, ret if -4096 < ret < 0 else -errno.EIO)
            if self.strict:
                raise err
            log.warn("restore", f"{err.message}; restoring task {task.pid} with the ptrace backend")
            if tmp:
                task.sys(NR.munmap, addr, tmp, what="munmap the request")
            task.reset_scratch()
            return False
        # later injections run from the stub's context, as with the ptrace backend
        ptrace.setregs(task.pid, before)
        task.reset_scratch()
        if log.level >= 4:
            log.debug(f"task {task.pid}: {DEVICE} {_stats_line()}; {_faults_line(task.pid)}")
        return True


def _stats_line() -> str:
    vals = {}
    for k in ("ns_last", "ns_last_teardown", "ns_last_build", "ns_last_prefault"):
        try:
            with open(os.path.join(STATS_DIR, k)) as f:
                vals[k] = int(f.read()) / 1e3
        except (OSError, ValueError):
            return "(no stats)"
    return (f"{vals['ns_last']:.0f} us (teardown {vals['ns_last_teardown']:.0f}, build {vals['ns_last_build']:.0f},"
            f" prefault {vals['ns_last_prefault']:.0f})")


def _faults_line(pid: int) -> str:
    """The task's fault counters right after the call (the bench subtracts them from later ones)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return "faults unknown"
    return f"faults after restore: minflt={fields[7]} majflt={fields[9]}"


_default = Backend()


def install_core(task: TaskCtl, ctx: OpenContext) -> int:
    return _default.install_core(task, ctx)


def finish_leader(task: TaskCtl) -> None:
    _default.finish_leader(task)
