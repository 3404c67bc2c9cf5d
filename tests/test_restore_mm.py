# SPDX-License-Identifier: MIT
"""restore/mm.py: the page runs of a pagemap cut along the VMAs they lie in."""

from __future__ import annotations

from spice_criu.images.pagemap import PageRun
from spice_criu.restore.mm import _clip_runs

P = 4096


def _run(page: int, n: int, off: int) -> PageRun:
    return PageRun(page * P, n, 4, "pages-1.img", off * P)


def _clip_all(runs: list[PageRun], vmas: list[tuple[int, int]]) -> list[list[PageRun]]:
    out, cursor = [], 0
    for lo, hi in vmas:
        inside, cursor = _clip_runs(runs, cursor, lo * P, hi * P)
        out.append(inside)
    return out


def test_runs_split_at_vma_boundaries_keep_their_file_offsets():
    runs = [_run(0, 2, 0), _run(3, 6, 2), _run(20, 1, 8)]  # the second spans three VMAs
    got = _clip_all(runs, [(0, 4), (4, 6), (6, 10), (10, 20), (20, 21)])
    assert got == [
        [_run(0, 2, 0), _run(3, 1, 2)],
        [_run(4, 2, 3)],
        [_run(6, 3, 5)],
        [],
        [_run(20, 1, 8)],
    ]
    assert got[0][0] is runs[0]  # a run wholly inside a VMA is shared, not copied


def test_vmas_without_pages_and_runs_before_the_first_vma():
    runs = [_run(1, 1, 0), _run(8, 2, 1)]
    assert _clip_all(runs, [(2, 4), (5, 8), (8, 9), (9, 12)]) == [[], [], [_run(8, 1, 1)], [_run(9, 1, 2)]]


def test_zero_page_runs_keep_no_offset():
    zero = PageRun(0, 4, 0, None, 0)
    assert _clip_all([zero], [(1, 3)]) == [[PageRun(P, 2, 0, None, 0)]]
