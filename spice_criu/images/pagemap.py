# SPDX-License-Identifier: MIT
"""Pagemaps: which page ranges of a task (or shmem object) have data, and where in pages-N.img.

pages-N.img is the concatenation, in pagemap order, of every PE_PRESENT range. Ranges flagged
PE_PARENT live in the parent image set (`<dir>/parent`, a chain for incremental dumps). CRIU 4.2
moved the page count from field 2 (u32) to field 5 (u64): read 5 if present, else 2; write both so
every CRIU version can read spice's images.
"""

from __future__ import annotations

import os

from ..errors import ImageError
from ..record import FrozenRecord
from . import codec

TYPE_CHECKING = False  # paths are strings: pathlib and typing cost the restore's start-up
if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

PAGE_SIZE = 4096
PE_PARENT = 1 << 0
PE_LAZY = 1 << 1
PE_PRESENT = 1 << 2
_MAX_PARENT_DEPTH = 64


class PageRun(FrozenRecord):
    """`nr_pages` pages at `vaddr` whose bytes are at `offset` in `pages_file` (None: zero pages)."""

    vaddr: int
    nr_pages: int
    flags: int
    pages_file: str | None
    offset: int

    @property
    def end(self) -> int:
        return self.vaddr + self.nr_pages * PAGE_SIZE

    @property
    def size(self) -> int:
        return self.nr_pages * PAGE_SIZE


def contiguous_batches(runs: Iterable[PageRun], limit: int = 1 << 30) -> list[list[PageRun]]:
    """The runs grouped by pages file, in file order, each group at most `limit` runs whose bytes
    follow each other in the file: one preadv()/process_vm_writev() reads or writes a group."""
    by_file: dict[str, list[PageRun]] = {}
    for r in runs:
        by_file.setdefault(str(r.pages_file), []).append(r)
    groups: list[list[PageRun]] = []
    for rs in by_file.values():
        rs.sort(key=lambda r: r.offset)
        for r in rs:
            last = groups[-1] if groups and groups[-1][0].pages_file == r.pages_file else None
            if last is not None and len(last) < limit and last[-1].offset + last[-1].size == r.offset:
                last.append(r)
            else:
                groups.append([r])
    return groups


def entry_pages(e) -> int:
    return e.nr_pages if e.HasField("nr_pages") else e.compat_nr_pages


def entry_flags(e) -> int:
    """Old images: in_parent=true means PE_PARENT; no flags at all means PE_PRESENT."""
    if e.HasField("flags"):
        return e.flags
    return PE_PARENT if e.in_parent else PE_PRESENT


def _own_runs(path: str) -> tuple[str, list[PageRun]]:
    img = codec.load(path, expect="PAGEMAP", lite=True)  # read-only: no protobuf needed
    pages_file = os.path.join(os.path.dirname(path), f"pages-{img.entries[0].msg.pages_id}.img")
    runs = []
    offset = 0
    last_end = -1
    for e in img.entries[1:]:
        m = e.msg
        n, flags = entry_pages(m), entry_flags(m)
        if m.vaddr % PAGE_SIZE or m.vaddr < last_end or n == 0 or m.vaddr + n * PAGE_SIZE > 1 << 64:
            raise ImageError(path, f"bad pagemap entry vaddr=0x{m.vaddr:x} nr_pages={n}")
        last_end = m.vaddr + n * PAGE_SIZE
        if flags & PE_PRESENT:
            runs.append(PageRun(m.vaddr, n, flags, pages_file, offset))
            offset += n * PAGE_SIZE
        else:
            runs.append(PageRun(m.vaddr, n, flags, None, 0))
    if offset:
        try:
            size = os.stat(pages_file).st_size
        except FileNotFoundError:
            raise ImageError(pages_file, f"missing (needed by {os.path.basename(path)})") from None
        if size < offset:
            raise ImageError(pages_file, f"holds {size} bytes but {os.path.basename(path)} needs {offset}")
    return pages_file, runs


def read_runs(path: str | os.PathLike, depth: int = 0, _seen: frozenset[str] = frozenset()) -> list[PageRun]:
    """Every range of the pagemap at `path`, PE_PARENT ranges resolved into the parent chain.

    Page files are named by strings (pages_file), in the directory `path` is named in."""
    path = os.fspath(path)
    _, runs = _own_runs(path)
    if not any(r.flags & PE_PARENT for r in runs):
        return runs
    if depth >= _MAX_PARENT_DEPTH:
        raise ImageError(path, "parent image chain too deep")
    here = os.path.realpath(os.path.dirname(path))
    parent_dir = os.path.join(os.path.dirname(path), "parent")
    parent = os.path.join(parent_dir, os.path.basename(path))
    if os.path.realpath(parent_dir) in _seen | {here}:
        raise ImageError(path, f"parent image chain loops back to {os.path.realpath(parent_dir)}")
    if not os.path.exists(parent):
        raise ImageError(path, f"has PE_PARENT pages but {parent} does not exist")
    prev = read_runs(parent, depth + 1, _seen | {here})
    out: list[PageRun] = []
    for r in runs:
        out.extend(_from_parent(r, prev, path) if r.flags & PE_PARENT else [r])
    return out


def _from_parent(r: PageRun, prev: list[PageRun], path: str) -> Iterator[PageRun]:
    """Split a PE_PARENT range into the pieces the parent's runs hold."""
    addr = r.vaddr
    for p in prev:
        if p.end <= addr or p.vaddr >= r.end:
            continue
        if p.vaddr > addr:
            break
        take_end = min(p.end, r.end)
        off = p.offset + (addr - p.vaddr) if p.pages_file else 0
        n = (take_end - addr) // PAGE_SIZE
        yield PageRun(addr, n, (r.flags & ~PE_PARENT) | (p.flags & PE_PRESENT), p.pages_file, off)
        addr = take_end
        if addr >= r.end:
            return
    raise ImageError(path, f"parent images lack pages at 0x{addr:x}")


class PagemapWriter:
    """Writes pagemap-*.img and appends page data to its pages-N.img in step."""

    def __init__(self, pagemap_path: str | os.PathLike, pages_id: int) -> None:
        self.pagemap_path = pagemap_path
        self.pages_id = pages_id
        self.pages_path = os.path.join(os.path.dirname(pagemap_path), f"pages-{pages_id}.img")
        self._pages = open(self.pages_path, "ab")  # noqa: SIM115 (closed in close())
        self._entries = [codec.pb("pagemap_head", lite=True)(pages_id=pages_id)]
        self.pages_written = 0

    def add(self, vaddr: int, data_or_pages: bytes | int, flags: int = PE_PRESENT) -> None:
        """Add a range: bytes (present data) or a page count (for ranges without data here)."""
        if isinstance(data_or_pages, int):
            n = data_or_pages
        else:
            n = len(data_or_pages) // PAGE_SIZE
            self._pages.write(data_or_pages)
            self.pages_written += n
        self._entries.append(pagemap_entry(vaddr, n, flags))

    def add_many(self, ranges: Iterable[tuple[int, bytes]], flags: int = PE_PRESENT) -> None:
        for vaddr, data in ranges:
            self.add(vaddr, data, flags)

    def close(self) -> None:
        self._pages.close()
        codec.dump(self.pagemap_path, codec.make("PAGEMAP", self._entries))


def pagemap_entry(vaddr: int, nr_pages: int, flags: int):
    """Both page-count fields: CRIU < 4.2 reads field 2, CRIU >= 4.2 prefers field 5 (a lite message:
    protobuf's bytes without importing protobuf)."""
    e = codec.entry_class("PAGEMAP", lite=True)(vaddr=vaddr, flags=flags, nr_pages=nr_pages)
    e.compat_nr_pages = nr_pages if nr_pages < 1 << 32 else 0
    return e
