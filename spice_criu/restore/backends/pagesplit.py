# SPDX-License-Identifier: MIT
"""Loading a large address space on two CPUs: the task reads part of its pages itself, the
restorer writes the rest into it at the same time.

Filling anonymous memory is bound by allocating and copying pages, one CPU's worth when the task
preadv()s everything. While the task works through its share, the restorer maps the rest of the
pages image (page cache, no copy) and process_vm_writev()s it straight into the task's VMAs: the
same single copy, on the other CPU. Only anonymous VMAs take part (in a private file mapping a
remote write would first copy the file's page), and only above a size where the extra ptrace
round trip pays off.
"""

from __future__ import annotations

import errno
import os

from ...errors import SpiceError
from ...images.pagemap import PageRun, contiguous_batches
from ...linux import mman, procvm
from ...vma import PAGE_SIZE
from ..mm import ANON, MmPlan

SPLIT_MIN = 8 << 20  # bytes of private pages below which one batch in the task is cheaper
TASK_SHARE = 0.55  # the task also pays for the batch round trips; the restorer starts later


def split(mm: MmPlan) -> tuple[list[PageRun], list[PageRun]]:
    """(runs the task reads, runs the restorer writes); the latter empty for small address spaces."""
    runs = mm.private_runs()
    total = sum(r.size for r in runs if r.pages_file)
    if total < SPLIT_MIN or os.cpu_count() == 1:
        return runs, []
    eligible = {id(r) for v in mm.vmas if v.kind == ANON for r in v.runs if r.pages_file}
    want = int(total * (1 - TASK_SHARE)) // PAGE_SIZE
    task: list[PageRun] = []
    ctl: list[PageRun] = []
    for r in reversed(runs):
        if want <= 0 or id(r) not in eligible:
            task.append(r)
        elif r.nr_pages <= want:
            ctl.append(r)
            want -= r.nr_pages
        else:  # split: the head stays with the task, the tail goes to the restorer
            head = r.nr_pages - want
            task.append(PageRun(r.vaddr, head, r.flags, r.pages_file, r.offset))
            ctl.append(PageRun(r.vaddr + head * PAGE_SIZE, want, r.flags, r.pages_file,
                               r.offset + head * PAGE_SIZE))
            want = 0
    task.reverse()
    return task, ctl


def write_pages(pid: int, runs: list[PageRun]) -> None:
    """process_vm_writev the runs from their (mapped) pages files into task pid."""
    for group in contiguous_batches(runs):
        path = str(group[0].pages_file)
        lo = group[0].offset
        size = sum(r.size for r in group)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                base = mman.mmap(0, size, mman.PROT_READ, mman.MAP_SHARED | mman.MAP_POPULATE, fd, lo)
            finally:
                os.close(fd)
        except OSError as e:
            raise SpiceError("restore", f"{path}: cannot map pages: {e.strerror}") from None
        try:
            if procvm.write_from(pid, base, [(r.vaddr, r.size) for r in group]) != size:
                raise OSError(errno.EFAULT, "short write")
        except OSError as e:
            raise SpiceError("restore", f"task {pid}: writing pages at 0x{group[0].vaddr:x} from {path} failed: "
                                        f"{e.strerror}") from None
        finally:
            mman.munmap(base, size)
