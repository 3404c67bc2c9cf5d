# SPDX-License-Identifier: MIT
"""The parallel page loading of the ptrace backend: who loads which pages, and the restorer's writes."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import pytest

from spice_criu.errors import SpiceError
from spice_criu.images.pagemap import PageRun
from spice_criu.linux import mman
from spice_criu.restore.backends import pagesplit
from spice_criu.restore.mm import ANON, FILE_PRIVATE, MmPlan, VmaPlan

P = 4096


def _mm(vmas: list[VmaPlan]) -> MmPlan:
    return MmPlan(vmas, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, [], "/bin/true", None, False,
                  sum(r.nr_pages for v in vmas for r in v.runs))


def _vma(start: int, pages: int, kind: str, runs: list[PageRun]) -> VmaPlan:
    return VmaPlan(start, start + pages * P, 3, 0x22, 0, 0, kind, runs=runs)


def _pages(runs: list[PageRun]) -> set[tuple[int, int]]:
    """(vaddr, file offset) of every page the runs cover."""
    return {(r.vaddr + i * P, r.offset + i * P) for r in runs for i in range(r.nr_pages)}


def test_small_address_space_is_not_split() -> None:
    f = Path("/img/pages-1.img")
    mm = _mm([_vma(0x10000, 16, ANON, [PageRun(0x10000, 16, 0, f, 0)])])
    task, ctl = pagesplit.split(mm)
    assert ctl == [] and task == mm.private_runs()


def test_large_address_space_splits_anon_pages_only_and_loses_none(monkeypatch: pytest.MonkeyPatch) -> None:
    f = Path("/img/pages-1.img")
    n = pagesplit.SPLIT_MIN // P
    file_runs = [PageRun(0x100000, n // 4, 0, f, 0)]
    anon_runs = [PageRun(0x10000000, n // 2, 0, f, n // 4 * P), PageRun(0x20000000, n, 0, f, 3 * n // 4 * P)]
    mm = _mm([_vma(0x100000, n // 4, FILE_PRIVATE, file_runs), _vma(0x10000000, n // 2, ANON, anon_runs[:1]),
              _vma(0x20000000, n, ANON, anon_runs[1:])])
    monkeypatch.setattr(pagesplit.os, "cpu_count", lambda: 1)
    assert pagesplit.split(mm) == (mm.private_runs(), [])  # one CPU: nothing to share
    monkeypatch.setattr(pagesplit.os, "cpu_count", lambda: 2)
    task, ctl = pagesplit.split(mm)
    # every page exactly once, at its own file offset
    assert _pages(task) | _pages(ctl) == _pages(mm.private_runs())
    assert not _pages(task) & _pages(ctl)
    # the restorer never writes into the file mapping, and gets about its share
    assert all(r.vaddr >= 0x10000000 for r in ctl)
    total = sum(r.nr_pages for r in mm.private_runs())
    share = sum(r.nr_pages for r in ctl) / total
    assert abs(share - (1 - pagesplit.TASK_SHARE)) < 0.01
    # a run cut in two keeps head and tail at consecutive file offsets
    assert all(r.nr_pages > 0 for r in task + ctl)


def test_write_pages_copies_the_file_bytes_into_the_process(tmp_path: Path) -> None:
    data = os.urandom(40 * P)
    img = tmp_path / "pages-1.img"
    img.write_bytes(data)
    base = mman.mmap(0, 64 * P, mman.PROT_READ | mman.PROT_WRITE, mman.MAP_PRIVATE | mman.MAP_ANONYMOUS)
    try:
        # two runs contiguous in the file (one syscall), one elsewhere, out of order
        runs = [PageRun(base + 30 * P, 5, 0, img, 20 * P), PageRun(base, 10, 0, img, 0),
                PageRun(base + 10 * P, 10, 0, img, 10 * P)]
        pagesplit.write_pages(os.getpid(), runs)
        got = ctypes.string_at(base, 64 * P)
        assert got[: 20 * P] == data[: 20 * P]
        assert got[20 * P : 30 * P] == bytes(10 * P)
        assert got[30 * P : 35 * P] == data[20 * P : 25 * P]
        assert got[35 * P :] == bytes(29 * P)
    finally:
        mman.munmap(base, 64 * P)


def test_write_into_an_unmapped_range_names_task_and_address(tmp_path: Path) -> None:
    img = tmp_path / "pages-1.img"
    img.write_bytes(bytes(4 * P))
    base = mman.mmap(0, 4 * P, mman.PROT_READ, mman.MAP_PRIVATE | mman.MAP_ANONYMOUS)  # not writable
    try:
        with pytest.raises(SpiceError, match=rf"task {os.getpid()}: writing pages at 0x{base:x}"):
            pagesplit.write_pages(os.getpid(), [PageRun(base, 4, 0, img, 0)])
    finally:
        mman.munmap(base, 4 * P)


def test_contiguous_batches_follow_the_files() -> None:
    """What one preadv/process_vm_writev covers: same file, consecutive bytes, at most `limit` runs."""
    from spice_criu.images.pagemap import contiguous_batches

    f1, f2 = Path("/img/pages-1.img"), Path("/img/pages-2.img")
    runs = [PageRun(0x5000, 1, 0, f1, 2 * P), PageRun(0x1000, 2, 0, f1, 0), PageRun(0x9000, 1, 0, f2, 0),
            PageRun(0x7000, 1, 0, f1, 4 * P), PageRun(0x8000, 1, 0, f1, 5 * P)]
    got = [[(r.pages_file, r.offset) for r in g] for g in contiguous_batches(runs)]
    assert got == [[(f1, 0), (f1, 2 * P)], [(f1, 4 * P), (f1, 5 * P)], [(f2, 0)]]
    assert [len(g) for g in contiguous_batches(runs, limit=1)] == [1, 1, 1, 1, 1]
