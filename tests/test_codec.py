# SPDX-License-Identifier: MIT
"""The image container codec, pagemaps (field 5 vs 2, parent chains), stats and image dirs."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from test_pb2dict import fill_required, msg

from spice_criu.errors import ImageError, SpiceError
from spice_criu.images import codec, imagedir, pagemap, stats
from spice_criu.images import magic as M

U32 = struct.Struct("<I")


def u32(*vals: int) -> bytes:
    return b"".join(U32.pack(v) for v in vals)


def entry(m) -> bytes:
    body = m.SerializeToString()
    return U32.pack(len(body)) + body


def image(magic: str, *entries) -> codec.Image:
    return codec.Image(magic, [codec.Entry(m, x) for m, x in entries])


# ------------------------------------------------------------------ container layout


def test_common_service_and_inventory_headers():
    p = msg("pstree_entry", pid=1, threads=[1, 2])
    assert codec.dumps(image("PSTREE", (p, None))) == u32(M.IMG_COMMON, M.MAGICS["PSTREE"]) + entry(p)
    inv = msg("inventory_entry", img_version=2, fdinfo_per_id=True)
    assert codec.dumps(image("INVENTORY", (inv, None))) == u32(M.MAGICS["INVENTORY"]) + entry(inv)
    st = codec.entry_class("STATS")()
    st.dump.SetInParent()
    fill_required(st.dump)
    assert codec.dumps(image("STATS", (st, None)))[:8] == u32(M.IMG_SERVICE, M.MAGICS["STATS"])
    for magic in ("PSTREE", "INVENTORY", "STATS"):
        img = codec.loads(codec.dumps(image(magic, (fill_required(codec.entry_class(magic)()), None))))
        assert img.magic == magic


def test_empty_array_image_and_many_entries():
    assert codec.loads(u32(M.IMG_COMMON, M.MAGICS["FDINFO"])).entries == []
    fds = [msg("fdinfo_entry", id=i, fd=i, type=1) for i in range(50)]
    img = codec.loads(codec.dumps(codec.make("FDINFO", fds)))
    assert [e.msg.fd for e in img.entries] == list(range(50))
    assert codec.count(codec.dumps(codec.make("FDINFO", fds))) == ("FDINFO", 50)


# ------------------------------------------------------------------ extra payloads


def _payload_cases():
    ipc = msg("ipc_msg_entry", qnum=2)
    m1, m2 = msg("ipc_msg", mtype=1, msize=5), msg("ipc_msg", mtype=7, msize=9)
    return [
        # (image, the bytes expected after each entry's message)
        (image("PIPES_DATA", (msg("pipe_data_entry", pipe_id=1, bytes=3), b"abc"),
               (msg("pipe_data_entry", pipe_id=2, bytes=0), b"")), [b"abc", b""]),
        (image("FIFO_DATA", (msg("pipe_data_entry", pipe_id=1, bytes=2), b"xy")), [b"xy"]),
        (image("SK_QUEUES", (msg("sk_packet_entry", id_for=1, length=4), b"\0\1\2\3")), [b"\0\1\2\3"]),
        (image("TCP_STREAM", (msg("tcp_stream_entry", inq_len=1, outq_len=2), (b"i", b"oo"))), [b"ioo"]),
        (image("BPFMAP_DATA", (msg("bpfmap_data_entry", keys_bytes=2, values_bytes=3), b"kkvvv")), [b"kkvvv"]),
        (image("IPCNS_SHM", (msg("ipc_shm_entry", size=5), b"hello"),
               (msg("ipc_shm_entry", size=8192, in_pagemaps=True), b"")), [b"hello\0\0\0", b""]),
        (image("IPCNS_SEM", (msg("ipc_sem_entry", nsems=3), [1, 2, 0xFFFF])),
         [struct.pack("<3H", 1, 2, 0xFFFF) + b"\0\0"]),
        (image("IPCNS_MSG", (ipc, [(m1, b"hello"), (m2, b"123456789")])),
         [entry(m1) + b"hello\0\0\0" + entry(m2) + b"123456789" + b"\0" * 7]),
    ]  # fmt: skip


@pytest.mark.parametrize("img, after", _payload_cases(), ids=lambda v: getattr(v, "magic", ""))
def test_every_payload_kind_round_trips_with_crius_layout(img, after):
    raw = codec.dumps(img)
    body = b"".join(entry(e.msg) + a for e, a in zip(img.entries, after, strict=True))
    want = u32(M.IMG_COMMON, M.MAGICS[img.magic]) + body
    assert raw == want
    back = codec.loads(raw)
    assert [(e.msg, e.extra) for e in back.entries] == [(e.msg, e.extra) for e in img.entries]
    assert codec.dumps(back) == raw
    # a payload cut short is an error at the entry's payload, never a short read
    with pytest.raises(ImageError, match=r"truncated|exceeds"):
        codec.loads(raw[:-1])


def test_ghost_file_plain_and_chunked_layout():
    head = msg("ghost_file_entry", mode=0o100600, size=6)
    raw = codec.dumps(image("GHOST_FILE", (head, b"abcdef")))
    assert raw == u32(M.IMG_COMMON, M.MAGICS["GHOST_FILE"]) + entry(head) + b"abcdef"
    assert codec.loads(raw).entries[0].extra == b"abcdef"
    assert codec.loads(raw[:-6]).entries[0].extra == b""
    chead = msg("ghost_file_entry", chunks=True)
    c1, c2 = msg("ghost_chunk_entry", len=3, off=0), msg("ghost_chunk_entry", len=1, off=4096)
    raw = codec.dumps(image("GHOST_FILE", (chead, None), (c1, b"abc"), (c2, b"z")))
    assert raw.endswith(entry(c1) + b"abc" + entry(c2) + b"z")
    back = codec.loads(raw)
    assert [e.extra for e in back.entries] == [None, b"abc", b"z"]
    with pytest.raises(ImageError, match="ghost chunk data"):
        codec.loads(raw[:-1])
    with pytest.raises(ImageError, match="no ghost_file_entry"):
        codec.loads(u32(M.IMG_COMMON, M.MAGICS["GHOST_FILE"]))


# ------------------------------------------------------------------ bad input


def _pstree() -> bytes:
    return u32(M.IMG_COMMON, M.MAGICS["PSTREE"]) + entry(msg("pstree_entry", pid=1))


@pytest.mark.parametrize(
    "data, offset, what",
    [
        (b"", 0, "truncated: magic needs 4 bytes"),
        (b"\x19\x43", 0, "truncated: magic"),
        (u32(M.IMG_COMMON), 4, "truncated: magic"),
        (u32(0x12345678), 0, "unknown magic 0x12345678"),
        (u32(M.IMG_COMMON, 0x12345678), 4, "unknown magic"),
        (u32(M.IMG_COMMON, M.MAGICS["KDAT"]), 4, "unknown magic"),
        (u32(M.IMG_COMMON, M.MAGICS["INVENTORY"]), 0, "must not have a head magic"),
        (u32(M.MAGICS["PSTREE"]), 0, "lacks its head magic"),
        (u32(M.IMG_SERVICE, M.MAGICS["PSTREE"]), 0, "wrong head magic"),
        (_pstree()[:-1], 8, "entry size 8 exceeds the 7 bytes left"),
        (_pstree()[:10], 8, "truncated: entry size"),
        (_pstree() + u32(0xFFFFFFFF), 20, "entry size 4294967295 exceeds"),
        (u32(M.IMG_COMMON, M.MAGICS["PSTREE"], 3) + b"\xff\xff\xff", 8, "bad pstree_entry message"),
        (u32(M.IMG_COMMON, M.MAGICS["PSTREE"], 2) + b"\x0b\x01", 8, "bad pstree_entry message"),  # group
        (u32(M.IMG_COMMON, M.MAGICS["PAGEMAP"]), 8, "no pagemap_head"),
        (u32(M.IMG_COMMON, M.MAGICS["IPCNS_SEM"]) + entry(msg("ipc_sem_entry", nsems=2**31)), 34,
         "semaphore values"),
    ],
)
def test_bad_images_are_image_errors_with_offsets(data, offset, what):
    with pytest.raises(ImageError) as e:
        codec.loads(data, "some.img")
    assert e.value.offset == offset and what in e.value.message and e.value.path == "some.img"
    assert e.value.criu_line().startswith(f"Error (spice/images): some.img at offset {offset}: ")


def test_load_names_the_file(tmp_path: Path):
    with pytest.raises(ImageError, match="no such image file") as e:
        codec.load(tmp_path / "core-1.img")
    assert e.value.path == tmp_path / "core-1.img"
    with pytest.raises(ImageError, match="cannot read"):
        codec.load(tmp_path)
    (tmp_path / "mm-1.img").write_bytes(_pstree())
    with pytest.raises(ImageError, match="wrong magic: found PSTREE, expected MM"):
        codec.load(tmp_path / "mm-1.img")
    (tmp_path / "renamed.img").write_bytes(_pstree())  # names CRIU does not use: the magic decides
    assert codec.load(tmp_path / "renamed.img").magic == "PSTREE"


def test_filename_table():
    for name, magic in [("core-12.img", "CORE"), ("pagemap-shmem-9.img", "PAGEMAP"), ("pages-3.img", "RAW"),
                        ("ghost-file-1f.img", "GHOST_FILE"), ("tcp-stream-32f1.img", "TCP_STREAM"),
                        ("stats-dump", "STATS"), ("memfd.img", "MEMFD_INODE"), ("ipcns-shm-9.img", "IPCNS_SHM"),
                        ("tmpfs-dev-42.tar.gz.img", "RAW"), ("what.img", None)]:
        assert M.magic_for_filename(name) == magic, name
    assert M.head_magic("INVENTORY") is None and M.head_magic("IRMAP_CACHE") == M.IMG_SERVICE


# ------------------------------------------------------------------ pagemaps


def _write_pagemap(d: Path, pid: int, pages_id: int, runs: list[tuple[int, int, int, bytes | None]],
                   old_format: bool = False) -> None:
    """runs: (vaddr, nr_pages, flags, data or None)."""
    entries = [msg("pagemap_head", pages_id=pages_id)]
    data = b""
    for vaddr, n, flags, payload in runs:
        if old_format:
            e = msg("pagemap_entry", vaddr=vaddr, compat_nr_pages=n)
            if flags & pagemap.PE_PARENT:
                e.in_parent = True
        else:
            e = pagemap.pagemap_entry(vaddr, n, flags)
        entries.append(e)
        if payload is not None:
            data += payload
    d.mkdir(parents=True, exist_ok=True)
    codec.dump(d / f"pagemap-{pid}.img", codec.make("PAGEMAP", entries))
    (d / f"pages-{pages_id}.img").write_bytes(data)


def page(c: int, n: int = 1) -> bytes:
    return bytes([c]) * (4096 * n)


def test_field_5_wins_over_field_2_and_writer_writes_both():
    e = msg("pagemap_entry", vaddr=0x1000, compat_nr_pages=3)
    assert pagemap.entry_pages(e) == 3 and pagemap.entry_flags(e) == pagemap.PE_PRESENT
    e.nr_pages = 5
    assert pagemap.entry_pages(e) == 5
    w = pagemap.pagemap_entry(0x2000, 7, pagemap.PE_PRESENT | pagemap.PE_LAZY)
    assert (w.compat_nr_pages, w.nr_pages, w.flags) == (7, 7, 6)
    raw = w.SerializeToString()
    assert b"\x10\x07" in raw and b"\x28\x07" in raw  # field 2 and field 5 on the wire
    big = pagemap.pagemap_entry(0, 2**32 + 1, pagemap.PE_PRESENT)
    assert (big.compat_nr_pages, big.nr_pages) == (0, 2**32 + 1)
    old = msg("pagemap_entry", vaddr=0, compat_nr_pages=1, in_parent=True)
    assert pagemap.entry_flags(old) == pagemap.PE_PARENT


def test_runs_map_present_ranges_to_pages_offsets(tmp_path: Path):
    _write_pagemap(tmp_path, 1, 1, [(0x10000, 2, 4, page(1, 2)), (0x20000, 1, 2, None), (0x30000, 1, 6, page(3))])
    runs = pagemap.read_runs(tmp_path / "pagemap-1.img")
    pages = str(tmp_path / "pages-1.img")  # page files are named by strings
    assert runs == [
        pagemap.PageRun(0x10000, 2, 4, pages, 0),
        pagemap.PageRun(0x20000, 1, 2, None, 0),  # lazy without data here
        pagemap.PageRun(0x30000, 1, 6, pages, 8192),
    ]
    assert runs[0].end == 0x12000 and runs[2].size == 4096


def test_writer_and_old_format_reader_agree(tmp_path: Path):
    w = pagemap.PagemapWriter(tmp_path / "pagemap-5.img", 4)
    w.add(0x400000, page(9, 2))
    w.add(0x500000, 3, pagemap.PE_PARENT)
    w.close()
    assert w.pages_written == 2 and (tmp_path / "pages-4.img").read_bytes() == page(9, 2)
    img = codec.load(tmp_path / "pagemap-5.img")
    assert img.entries[0].msg.pages_id == 4 and [pagemap.entry_pages(e.msg) for e in img.entries[1:]] == [2, 3]
    _write_pagemap(tmp_path / "old", 1, 1, [(0x1000, 1, 4, page(1))], old_format=True)
    assert pagemap.read_runs(tmp_path / "old" / "pagemap-1.img")[0].flags == pagemap.PE_PRESENT


def test_parent_chain_resolution(tmp_path: Path):
    base, mid, top = tmp_path / "0", tmp_path / "1", tmp_path / "2"
    _write_pagemap(base, 7, 1, [(0x100000, 4, 4, page(1, 4))])
    _write_pagemap(mid, 7, 1, [(0x100000, 1, 4, page(2)), (0x101000, 3, 1, None)])
    _write_pagemap(top, 7, 1, [(0x100000, 2, 1, None), (0x102000, 1, 4, page(3)), (0x103000, 1, 1, None)])
    (mid / "parent").symlink_to("../0")
    (top / "parent").symlink_to("../1")
    runs = pagemap.read_runs(top / "pagemap-7.img")
    got = [(r.vaddr, r.nr_pages, Path(r.pages_file).resolve().parent.name, r.offset) for r in runs]
    assert got == [
        (0x100000, 1, "1", 0),  # from the parent's own pages
        (0x101000, 1, "0", 4096),  # the parent's hole, resolved in the grandparent
        (0x102000, 1, "2", 0),
        (0x103000, 1, "0", 3 * 4096),
    ]
    assert all(r.flags & pagemap.PE_PRESENT and not r.flags & pagemap.PE_PARENT for r in runs)
    data = b"".join(Path(r.pages_file).read_bytes()[r.offset : r.offset + r.size] for r in runs)
    assert data == page(2) + page(1) + page(3) + page(1)


def test_pagemap_errors(tmp_path: Path):
    _write_pagemap(tmp_path / "a", 1, 1, [(0x1000, 1, 1, None)])
    with pytest.raises(ImageError, match="PE_PARENT pages but .*parent/pagemap-1.img does not exist"):
        pagemap.read_runs(tmp_path / "a" / "pagemap-1.img")
    _write_pagemap(tmp_path / "b", 1, 1, [(0x1000, 1, 1, None)])
    _write_pagemap(tmp_path / "b0", 1, 1, [(0x8000, 1, 4, page(1))])
    (tmp_path / "b" / "parent").symlink_to("../b0")
    with pytest.raises(ImageError, match="parent images lack pages at 0x1000"):
        pagemap.read_runs(tmp_path / "b" / "pagemap-1.img")
    _write_pagemap(tmp_path / "c", 1, 1, [(0x1000, 1, 1, None)])
    (tmp_path / "c" / "parent").symlink_to(".")
    with pytest.raises(ImageError, match="parent image chain loops back"):
        pagemap.read_runs(tmp_path / "c" / "pagemap-1.img")
    _write_pagemap(tmp_path / "d", 1, 1, [(0x1000, 2, 4, page(1))])
    (tmp_path / "d" / "pages-1.img").write_bytes(page(1))
    with pytest.raises(ImageError, match="holds 4096 bytes but pagemap-1.img needs 8192"):
        pagemap.read_runs(tmp_path / "d" / "pagemap-1.img")
    (tmp_path / "d" / "pages-1.img").unlink()
    with pytest.raises(ImageError, match="missing"):
        pagemap.read_runs(tmp_path / "d" / "pagemap-1.img")
    for runs in ([(0x1001, 1, 4, page(1))], [(0x1000, 2, 4, page(1, 2)), (0x1000, 1, 4, page(1))],
                 [(0x1000, 0, 4, b"")]):
        _write_pagemap(tmp_path / "e", 1, 1, runs)
        with pytest.raises(ImageError, match="bad pagemap entry"):
            pagemap.read_runs(tmp_path / "e" / "pagemap-1.img")


# ------------------------------------------------------------------ stats and image dirs


def test_stats_write_read_display(tmp_path: Path):
    p = Path(stats.write(tmp_path, "dump", freezing_time=12, pages_written=564, shpages_written=16))
    raw = p.read_bytes()
    assert p.name == "stats-dump" and raw[:8] == u32(M.IMG_SERVICE, M.MAGICS["STATS"])
    s = stats.read(p)
    assert s.dump.pages_written == 564 and s.dump.shpages_written == 16 and s.dump.pages_lazy == 0
    assert not s.HasField("restore")
    text = stats.display("dump", s)
    assert text.startswith("Displaying dump stats:\n") and "Freezing time: 12 us\n" in text
    assert "Memory pages written: 564 (0x234)\n" in text
    r = stats.read(stats.write(tmp_path, "restore", restore_time=5, pages_restored=3))
    assert "Restore time: 5 us" in stats.display("restore", r) and r.restore.pages_compared == 0
    (tmp_path / "stats-dump").write_bytes(_pstree())
    with pytest.raises(ImageError, match="expected STATS"):
        stats.read(tmp_path / "stats-dump")


def test_imagedir(tmp_path: Path):
    with pytest.raises(SpiceError, match="does not exist"):
        imagedir.ImageDir(tmp_path / "none")
    d = imagedir.ImageDir(tmp_path)
    assert d.entries("pipes-data.img") == [] and d.one("mm-1.img", optional=True) is None
    with pytest.raises(ImageError, match="inventory.img: no such image file"):
        d.check_restorable()
    codec.dump(tmp_path / "pstree.img", codec.make("PSTREE", [msg("pstree_entry", pid=1), msg("pstree_entry", pid=2)]))
    assert [p.pid for p in d.entries("pstree.img")] == [1, 2]
    with pytest.raises(ImageError, match="expected exactly one entry, found 2"):
        d.one("pstree.img")
    with pytest.raises(ImageError, match="unknown image name"):
        d.load("bogus.img")
    with pytest.raises(ImageError, match="no such image file"):
        d.entries("core-1.img", optional=False)
    codec.dump(tmp_path / "inventory.img", codec.make("INVENTORY", [msg("inventory_entry", img_version=2)]))
    d.check_restorable()
    (tmp_path / imagedir.PARTIAL_MARKER).touch()
    with pytest.raises(SpiceError, match="incomplete dump"):
        d.check_restorable()
    os.unlink(tmp_path / imagedir.PARTIAL_MARKER)
