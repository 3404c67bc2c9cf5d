# SPDX-License-Identifier: MIT
"""Memory contents: pagemap-<pid>.img + pages-<n>.img, and the page writer shared memory uses too.

Which pages CRIU writes (criu/mem.c): in every private mapping, the pages that are present or swapped,
minus the shared zero page and minus file pages not yet copied-on-write; the vDSO whole. Anonymous
private pages are flagged PE_PRESENT|PE_LAZY, the rest PE_PRESENT. The page tables are asked with
PAGEMAP_SCAN (one ioctl per mapping) where the kernel has it, else /proc/PID/pagemap; the bytes are
copied with process_vm_readv (or /proc/PID/mem for pages the task cannot read itself) straight into
the image, in address order, adjacent ranges with equal flags merged.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import time

from .. import once
from .. import vma as V
from ..errors import SpiceError
from ..images import codec
from ..images.lite import Message
from ..images.pagemap import PE_LAZY, PE_PRESENT, pagemap_entry
from ..linux import mman, procvm
from ..linux.syscalls import NR, syscall

TYPE_CHECKING = False  # typing costs ~10 ms of start-up; annotations are strings
if TYPE_CHECKING:
    from collections.abc import Iterable

    from .imgset import ImageSet

PAGE = 4096
TASK_SIZE = 0x7FFFFFFFF000
MAP_LOCKED, MAP_HUGETLB = 0x2000, 0x40000
#: bytes copied per process_vm_readv + write: a reused buffer that stays in the CPU cache (16 MiB
#: measured slower, and more often hit by slow page-cache allocation, on pyholder's 60 MiB)
CHUNK = 1 << 20
MAP_POPULATE = 0x8000

# PAGEMAP_SCAN (Linux 6.7)
PAGEMAP_SCAN = 0xC0606610
PAGE_IS_FILE, PAGE_IS_PRESENT, PAGE_IS_SWAPPED, PAGE_IS_PFNZERO = 1 << 2, 1 << 3, 1 << 4, 1 << 5
# /proc/PID/pagemap entry bits
PM_PRESENT, PM_SWAP, PM_FILE = 1 << 63, 1 << 62, 1 << 61
PM_PFN_MASK = (1 << 55) - 1


class PmScanArg(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in (
        "size", "flags", "start", "end", "walk_end", "vec", "vec_len", "max_pages", "category_inverted",
        "category_mask", "category_anyof_mask", "return_mask")]


class PageRegion(ctypes.Structure):
    _fields_ = [("start", ctypes.c_uint64), ("end", ctypes.c_uint64), ("categories", ctypes.c_uint64)]


class Stats:
    """Page counts and times for stats-dump (memdump: finding and reading pages; memwrite: writing)."""

    __slots__ = ("scanned", "written", "lazy", "sh_scanned", "sh_written", "dump_s", "write_s")

    def __init__(self) -> None:
        self.scanned = self.written = self.lazy = self.sh_scanned = self.sh_written = 0
        self.dump_s = self.write_s = 0.0


class PagesImage:
    """A pagemap image and the pages-<id>.img it indexes, written in step."""

    def __init__(self, images: ImageSet, pagemap_name: str, pages_id: int, stats: Stats) -> None:
        self.images = images
        self.name = pagemap_name
        self.pages_id = pages_id
        self.stats = stats
        path = images.file(f"pages-{pages_id}.img")
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        self.entries: list[Message] = [codec.pb("pagemap_head", lite=True)(pages_id=pages_id)]
        self.pages = 0
        self.size = self.reserved = 0

    def reserve(self, size: int) -> None:
        """Allocate the file's blocks up front (fallocate; ignored where unsupported). Measured on
        ext4 here: writes into a preallocated pages-*.img run ~1.5x faster, and none of them falls
        into the intermittent ~300 MB/s mode that delayed allocation showed in a third of the runs."""
        t0 = time.perf_counter()
        try:  # fallocate(2) itself: glibc's posix_fallocate() would write every block where unsupported
            if size > 0:
                syscall(NR.fallocate, self.fd, 0, 0, size)
                self.reserved = size
        except OSError:
            pass
        self.stats.write_s += time.perf_counter() - t0

    def entry(self, vaddr: int, nr_pages: int, flags: int) -> None:
        last = self.entries[-1] if len(self.entries) > 1 else None
        if last is not None and last.flags == flags and last.vaddr + last.nr_pages * PAGE == vaddr:
            last.nr_pages += nr_pages
            last.compat_nr_pages = last.nr_pages if last.nr_pages < 1 << 32 else 0
        else:
            self.entries.append(pagemap_entry(vaddr, nr_pages, flags))
        self.pages += nr_pages

    def write(self, data: memoryview | bytes) -> None:
        t0 = time.perf_counter()
        view = memoryview(data)
        self.size += len(view)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
        self.stats.write_s += time.perf_counter() - t0

    def sendfile(self, src: int, offset: int, count: int) -> None:
        t0 = time.perf_counter()
        while count:
            n = os.sendfile(self.fd, src, offset, count)
            if n <= 0:
                raise OSError(errno.EIO, "short sendfile")
            offset += n
            count -= n
            self.size += n
        self.stats.write_s += time.perf_counter() - t0

    def close(self) -> None:
        try:
            if self.reserved > self.size:  # never longer than what the pagemap describes
                os.ftruncate(self.fd, self.size)
        finally:
            os.close(self.fd)
        self.images.add_all(self.name, "PAGEMAP", self.entries)


# ------------------------------------------------------------------------------------------ page tables


@once
def zero_pfn() -> int:
    """PFN of the kernel's shared zero page, found as CRIU's kerndat does: read an untouched
    anonymous page (it maps the zero page) and look it up in our own pagemap."""
    addr = mman.mmap(0, PAGE, mman.PROT_READ, mman.MAP_PRIVATE | mman.MAP_ANONYMOUS)
    try:
        ctypes.c_char.from_address(addr).value  # noqa: B018 - fault the zero page in
        with open("/proc/self/pagemap", "rb", buffering=0) as f:
            f.seek(addr // PAGE * 8)
            e = int.from_bytes(f.read(8), "little")
        return e & PM_PFN_MASK if e & PM_PRESENT else -1
    finally:
        mman.munmap(addr, PAGE)


class PageTables:
    """Which pages of a task are present, via PAGEMAP_SCAN or the plain pagemap file."""

    _scan_works: bool | None = None

    def __init__(self, pid: int) -> None:
        self.pid = pid
        try:
            self.fd = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise SpiceError("dump", f"task {pid}: can't open its pagemap: {e.strerror}") from None
        self._vec = (PageRegion * 512)()

    def close(self) -> None:
        os.close(self.fd)

    def ranges(self, start: int, end: int, skip_file: bool) -> list[tuple[int, int]]:
        """[start, end) ranges of pages that hold data: present or swapped, not the zero page, and
        (skip_file) not page-cache pages of a private file mapping."""
        if PageTables._scan_works is not False:
            try:
                out = self._scan(start, end, skip_file)
                PageTables._scan_works = True
                return out
            except OSError as e:
                if e.errno not in (errno.ENOTTY, errno.EINVAL, errno.EOPNOTSUPP) or PageTables._scan_works:
                    raise
                PageTables._scan_works = False
        return self._pagemap(start, end, skip_file)

    def _scan(self, start: int, end: int, skip_file: bool) -> list[tuple[int, int]]:
        excl = PAGE_IS_PFNZERO | (PAGE_IS_FILE if skip_file else 0)
        arg = PmScanArg(size=ctypes.sizeof(PmScanArg), start=start, end=end,
                        vec=ctypes.addressof(self._vec), vec_len=len(self._vec), category_inverted=excl,
                        category_mask=excl, category_anyof_mask=PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
                        return_mask=PAGE_IS_PRESENT | PAGE_IS_SWAPPED)
        out: list[tuple[int, int]] = []
        while True:
            n = fcntl.ioctl(self.fd, PAGEMAP_SCAN, arg)
            for i in range(n):
                r = self._vec[i]
                if out and out[-1][1] == r.start:
                    out[-1] = (out[-1][0], r.end)
                else:
                    out.append((r.start, r.end))
            if arg.walk_end >= end or n < len(self._vec):
                return out
            arg.start = arg.walk_end

    def _pagemap(self, start: int, end: int, skip_file: bool) -> list[tuple[int, int]]:
        import array  # only without PAGEMAP_SCAN: array pulls in collections (~2 ms of start-up)

        n = (end - start) // PAGE
        raw = os.pread(self.fd, n * 8, start // PAGE * 8)
        ents = array.array("Q")
        ents.frombytes(raw[: len(raw) // 8 * 8])
        zpfn = zero_pfn()
        out: list[tuple[int, int]] = []
        for i, e in enumerate(ents):
            if not e & (PM_PRESENT | PM_SWAP):
                continue
            if skip_file and e & PM_FILE:
                continue
            if e & PM_PRESENT and (e & PM_PFN_MASK) == zpfn:
                continue
            a = start + i * PAGE
            if out and out[-1][1] == a:
                out[-1] = (out[-1][0], a + PAGE)
            else:
                out.append((a, a + PAGE))
        return out


# ------------------------------------------------------------------------------------------ private memory


def dumpable(v: Message) -> bool:
    """vma_entry_is_private() minus the VVAR area: the mappings whose pages the task image holds."""
    st = v.status
    private = st & V.VMA_AREA_REGULAR and st & (V.VMA_ANON_PRIVATE | V.VMA_FILE_PRIVATE) and v.end <= TASK_SIZE
    return bool(private or st & V.VMA_AREA_AIORING) and not st & V.VMA_AREA_VVAR


def can_be_lazy(v: Message) -> bool:
    f = v.flags
    return bool(f & V.MAP_ANONYMOUS and f & V.MAP_PRIVATE and not f & MAP_LOCKED and not f & MAP_HUGETLB
                and not v.status & (V.VMA_AREA_VDSO | V.VMA_AREA_VSYSCALL))


def stack_pins_all(sps: Iterable[int]) -> bool:
    """CRIU 4.2.1's is_stack() compares the page *offset* of each thread's sp with the (page-aligned)
    address: it matches every page when some sp is page aligned, none otherwise. Reproduced so the
    PE_LAZY flags equal real CRIU's."""
    return any(sp & (PAGE - 1) == 0 for sp in sps)


def collect_runs(pid: int, vmas: list[Message], sps: Iterable[int], stats: Stats) -> list[tuple[int, int, int]]:
    """(vaddr, nr_pages, flags) of every page run the task image must hold, in address order."""
    no_lazy = stack_pins_all(sps)
    pt = PageTables(pid)
    runs: list[tuple[int, int, int]] = []
    try:
        for v in vmas:
            if not dumpable(v):
                continue
            stats.scanned += (v.end - v.start) // PAGE
            flags = PE_PRESENT | (PE_LAZY if can_be_lazy(v) and not no_lazy else 0)
            if v.status & (V.VMA_AREA_VDSO | V.VMA_AREA_AIORING):
                ranges = [(v.start, v.end)]
            else:
                ranges = pt.ranges(v.start, v.end, bool(v.status & V.VMA_FILE_PRIVATE))
            for lo, hi in ranges:
                n = (hi - lo) // PAGE
                if runs and runs[-1][2] == flags and runs[-1][0] + runs[-1][1] * PAGE == lo:
                    runs[-1] = (runs[-1][0], runs[-1][1] + n, flags)
                else:
                    runs.append((lo, n, flags))
    finally:
        pt.close()
    return runs


def unpopulated_below_sp(pid: int, tid: int) -> set[int]:
    """Pages just below a thread's stack pointer that hold nothing yet. Running syscalls in the
    thread (inject.Remote) writes a signal frame there and puts the bytes back, which leaves such a
    page populated with zeros; CRIU, and the task, saw no page there, so the dump must not either."""
    from ..linux import ptrace as ptr

    sp = ptr.peekuser(tid, ptr.REG_OFFSET["sp"])
    lo = (sp - 128 - ptr.xstate_size(tid) - 1024) & ~(PAGE - 1)
    hi = (sp + PAGE - 1) & ~(PAGE - 1)
    if not 0 < lo < hi <= TASK_SIZE:
        return set()
    tables = PageTables(pid)
    try:
        present = tables.ranges(lo, hi, skip_file=False)
    except OSError:
        return set()
    finally:
        tables.close()
    return {a for a in range(lo, hi, PAGE) if not any(p0 <= a < p1 for p0, p1 in present)}


def drop_scratch_pages(pid: int, runs: list[tuple[int, int, int]], untouched: set[int]) -> list[tuple[int, int, int]]:
    """Runs without the pages of `untouched` that are all zeros now (populated by our own frames)."""
    if not untouched:
        return runs
    zero = bytes(PAGE)
    drop = set()
    for vaddr, n, _ in runs:
        for a in untouched:
            if vaddr <= a < vaddr + n * PAGE and procvm.read_any(pid, a, PAGE) == zero:
                drop.add(a)
    if not drop:
        return runs
    out: list[tuple[int, int, int]] = []
    for vaddr, n, flags in runs:
        start = vaddr
        for i in range(n + 1):
            a = vaddr + i * PAGE
            if i == n or a in drop:
                if a > start:
                    out.append((start, (a - start) // PAGE, flags))
                start = a + PAGE
    return out


_buffer_kept: list[tuple[memoryview, int]] = []


def _buffer(size: int) -> tuple[memoryview, int]:
    """A copy buffer of at least `size` bytes and its address, kept for the next task: an anonymous
    mapping, prefaulted in one go (a bytearray is zero-filled by hand first, then faulted page by
    page), never unmapped (the process ends after the dump)."""
    if _buffer_kept and len(_buffer_kept[0][0]) >= size:
        return _buffer_kept[0]
    addr = mman.mmap(0, size, mman.PROT_READ | mman.PROT_WRITE, mman.MAP_PRIVATE | mman.MAP_ANONYMOUS | MAP_POPULATE)
    _buffer_kept[:] = [(memoryview((ctypes.c_char * size).from_address(addr)).cast("B"), addr)]
    return _buffer_kept[0]


#: above this many bytes a second thread copies half of a task's pages (two CPUs: process_vm_readv
#: and pwrite release the GIL); below it the thread costs more than it saves
PARALLEL_MIN = 8 << 20


def _cpus() -> int:
    return len(os.sched_getaffinity(0))


def write_runs(pid: int, runs: list[tuple[int, int, int]], out: PagesImage) -> None:
    """Copy the runs' bytes from the task into the pages image, CHUNK bytes at a time, in file
    order; above PARALLEL_MIN (and with a second CPU) the second half of the file is copied by a
    second thread at the same time. stats: the reading and writing time of both threads."""
    total = sum(n for _, n, _ in runs) * PAGE
    out.reserve(total)
    chunks: list[list[tuple[int, int]]] = [[]]  # the remote ranges of each chunk, in file order
    size = 0
    for vaddr, n, flags in runs:
        out.entry(vaddr, n, flags)
        out.stats.written += n
        addr, left = vaddr, n * PAGE
        while left:
            take = min(left, CHUNK - size)
            chunks[-1].append((addr, take))
            size += take
            addr += take
            left -= take
            if size == CHUNK:
                chunks.append([])
                size = 0
    if not chunks[-1]:
        chunks.pop()
    two = total > PARALLEL_MIN and _cpus() > 1
    buf, buf_addr = _buffer(2 * CHUNK if two else min(CHUNK, max(total, PAGE)))
    times = [0.0, 0.0, 0.0, 0.0]  # reading, writing: this thread's, the second thread's
    base = out.size  # pwrite at the end of what the image holds; the file position follows below
    if not two:
        _copy(pid, chunks, base, buf, buf_addr, out.fd, times)
    else:
        import _thread

        half = len(chunks) // 2
        second = chunks[half:]
        offset = base + half * CHUNK
        failed: list[BaseException] = []
        done = _thread.allocate_lock()
        done.acquire()

        def worker() -> None:
            try:
                _copy(pid, second, offset, buf[CHUNK:], buf_addr + CHUNK, out.fd, times, 2)
            except BaseException as e:  # noqa: BLE001 - handed to the main thread
                failed.append(e)
            finally:
                done.release()

        _thread.start_new_thread(worker, ())
        try:
            _copy(pid, chunks[:half], base, buf[:CHUNK], buf_addr, out.fd, times)
        finally:
            done.acquire()  # never leave the thread writing into a file we close
        if failed:
            raise failed[0]
    out.size += total
    os.lseek(out.fd, out.size, os.SEEK_SET)  # for write()/sendfile() after us
    out.stats.dump_s += times[0] + times[2]
    out.stats.write_s += times[1] + times[3]


def _copy(pid: int, chunks: list[list[tuple[int, int]]], offset: int, buf: memoryview, buf_addr: int, fd: int,
          times: list[float], slot: int = 0) -> None:
    """process_vm_readv each chunk into buf, pwrite it at its offset of the file; the time spent
    reading and writing is added to times[slot] and times[slot + 1]."""
    for ranges in chunks:
        t0 = time.perf_counter()
        size = sum(n for _, n in ranges)
        view = buf[:size]
        if procvm.read_to(pid, buf_addr, ranges) != size:
            _read_slow(pid, ranges, view)
        t1 = time.perf_counter()
        done = 0
        while done < size:
            done += os.pwrite(fd, view[done:], offset + done)
        offset += size
        times[slot] += t1 - t0
        times[slot + 1] += time.perf_counter() - t1


def _read_slow(pid: int, ranges: list[tuple[int, int]], into: memoryview) -> None:
    """Ranges process_vm_readv cannot read (no PROT_READ): /proc/PID/mem reads them anyway."""
    with procvm.ProcMem(pid, writable=False) as m:
        off = 0
        for addr, n in ranges:
            try:
                into[off : off + n] = m.read(addr, n)
            except OSError as e:
                raise SpiceError("dump", f"task {pid}: can't read memory at 0x{addr:x}: {e.strerror}") from None
            off += n
