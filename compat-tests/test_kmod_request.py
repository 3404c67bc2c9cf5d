# SPDX-License-Identifier: MIT
"""Issue 5, without the module: the kmod backend's SPICE_IOC_RESTORE request is byte-exact against
an independent ctypes mirror of kmod/include/uapi/spice.h (kmod/tests/test_spice_device.py), and
the decisions taken before the call are right: copy vs page-cache mode, working-set clipping,
backend choice, rejection messages, working-set files. Runs on any host (and in the guest)."""

from __future__ import annotations

import ctypes
import importlib.util
import json
import struct
from pathlib import Path

import pytest

import spice_criu.restore.run as run  # the restore package in its import order
from spice_criu.errors import SpiceError
from spice_criu.images.imagedir import ImageDir
from spice_criu.images.pagemap import PageRun
from spice_criu.log import log
from spice_criu.restore import workingset
from spice_criu.restore.backends import kmod
from spice_criu.restore.backends import ptrace as ptrace_backend
from spice_criu.restore.mm import ANON, FILE_PRIVATE, FILE_SHARED, MmPlan, VmaPlan

REPO = Path(__file__).resolve().parent.parent
PAGE = 4096


def _mirror():
    spec = importlib.util.spec_from_file_location("spice_uapi_mirror", REPO / "kmod/tests/test_spice_device.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _vma(start: int, pages: int, kind: str = ANON, prot: int = 3, flags: int = 0x22, runs=(), path=None) -> VmaPlan:
    v = VmaPlan(start, start + pages * PAGE, prot, flags, 0, 0, kind)
    v.path = path
    v.runs = list(runs)
    return v


def _mm(vmas: list[VmaPlan]) -> MmPlan:
    return MmPlan(vmas=vmas, start_code=0x400000, end_code=0x401000, start_data=0x402000, end_data=0x403000,
                  start_stack=0x7FFF0000, start_brk=0x500000, brk=0x501000, arg_start=0x7FFF1000,
                  arg_end=0x7FFF1100, env_start=0x7FFF1100, env_end=0x7FFF1200, auxv=[6, 4096, 0, 0],
                  exe_path="/bin/true", dumpable=None, thp_disabled=False, pages_total=0)


def test_request_matches_the_uapi_mirror() -> None:
    m = _mirror()
    req = kmod.Request(4242)
    f_pages = req.file(7, kmod.FILE_PAGES, "pages image /x/pages-1.img")
    f_map = req.file(8, kmod.FILE_MAP, "mapped file /bin/true")
    f_exe = req.file(8, kmod.FILE_EXE, "exe /bin/true")  # the same fd in two roles: closed once
    req.vmas = [kmod.VMA.pack(0x10000, 0x20000, 0, 3, 0x22, kmod.VMA_ANON_PRIVATE, -1, 0, 0),
                kmod.VMA.pack(0x400000, 0x401000, 0, 5, 0x02, kmod.VMA_FILE_PRIVATE, f_map, kmod.VMAF_COPY, 0)]
    req.sources = [(0x11000, 3, 8192, f_pages)]
    req.ws = [(0x11000, 2, kmod.WS_WRITE), (0x400000, 1, 0)]
    req.keep = [(0x7000000000, 0x7000004000), (0x7000010000, 0x7000051000)]
    req.xsave = bytes(range(256)) * 3
    req.mm = kmod.MM_FMT.pack(*range(1, 12), 4, f_exe, 33, 0x7000000000, 0, 0, *([0] * 60))
    req.task = kmod.TASK_HEAD.pack(0, 1 << 9, 0x600000, 8192, 0, 0, 0x601000, 0x602000, 24, 0, 0, 0) + \
        b"".join(kmod.SIGACTION.pack(i, i + 1, i + 2, i + 3) for i in range(64))
    req.regs = kmod.REGS.pack(*range(100, 127))
    req.flags = kmod.RF_REGS | kmod.RF_FPU | kmod.RF_MM
    req.prefault = kmod.PREFAULT_WS
    data = req.pack()

    hdr = m.Restore.from_buffer_copy(data[: ctypes.sizeof(m.Restore)])
    assert ctypes.sizeof(m.Restore) == kmod.HDR_SIZE
    assert kmod.IOC_RESTORE == m.IOC_RESTORE and kmod.IOC_VERSION == m.IOC_VERSION
    assert (hdr.magic, hdr.version, hdr.hdr_size, hdr.total_size) == (m.REQ_MAGIC, 1, kmod.HDR_SIZE, len(data))
    assert len(data) % 8 == 0 and hdr.flags == req.flags and hdr.prefault == kmod.PREFAULT_WS
    assert hdr.reserved0 == 0 and list(hdr.reserved) == [0] * 7 and hdr.err_table == hdr.err_index == 0

    def table(t, esize: int, fmt: struct.Struct | None):
        assert t.entry_size == esize and t.reserved == 0 and t.offset % 8 == 0 and t.offset >= kmod.HDR_SIZE
        raw = data[t.offset : t.offset + t.count * esize]
        assert len(raw) == t.count * esize
        return raw if fmt is None else [fmt.unpack_from(raw, i * esize) for i in range(t.count)]

    assert table(hdr.files, 16, kmod.FILE) == [(7, 1, 1, 0), (8, 2, 1, 0), (8, 4, 0, 0)]
    assert table(hdr.vmas, 48, kmod.VMA)[1] == (0x400000, 0x401000, 0, 5, 2, 3, 1, 1, 0)
    assert table(hdr.sources, 32, kmod.SOURCE) == [(0x11000, 3, 8192, 0, 0)]
    assert table(hdr.ws, 24, kmod.WS) == [(0x11000, 2, 1, 0), (0x400000, 1, 0, 0)]
    assert table(hdr.keep, 16, kmod.RANGE) == req.keep
    assert table(hdr.xsave, 1, None) == req.xsave
    assert (hdr.mm.start_code, hdr.mm.env_end, hdr.mm.auxv_words, hdr.mm.exe_file) == (1, 11, 4, 2)
    assert list(hdr.mm.auxv[:4]) == [33, 0x7000000000, 0, 0]
    assert (hdr.task.sigaction_mask, hdr.task.ss_sp, hdr.task.ss_size, hdr.task.robust_list_len) == (512, 0x600000,
                                                                                                    8192, 24)
    assert (hdr.task.act[5].handler, hdr.task.act[5].mask) == (5, 8)
    assert [getattr(hdr.regs, n) for n in m.REG_NAMES] == list(range(100, 127))
    # empty tables are all zero
    empty = kmod.Request(1)
    h = m.Restore.from_buffer_copy(empty.pack())
    assert all((t.offset, t.count, t.entry_size) == (0, 0, 0) for t in (h.files, h.vmas, h.ws, h.xsave))


def test_rejections_name_the_object() -> None:
    req = kmod.Request(77)
    req.file(3, kmod.FILE_PAGES, "pages image /img/pages-1.img")
    req.names[kmod.ERR_VMAS].append("VMA 0x10000-0x20000 (anon anon)")
    assert req.describe(kmod.ERR_FILES, 0) == "pages image /img/pages-1.img"
    assert req.describe(kmod.ERR_VMAS, 0) == "VMA 0x10000-0x20000 (anon anon)"
    assert req.describe(kmod.ERR_VMAS, kmod.NO_INDEX) == "the vmas table (1 entries)"
    assert req.describe(kmod.ERR_TASK, 9) == "the action of signal 10 (core-77.img)"
    assert "altstack" in req.describe(kmod.ERR_TASK, kmod.NO_INDEX)
    assert req.describe(kmod.ERR_REGS, kmod.NO_INDEX) == "the registers (core-77.img)"
    assert "mm-77.img" in req.describe(kmod.ERR_MM, kmod.NO_INDEX)


def test_copy_or_page_cache() -> None:
    heap = _vma(0x500000, 16, runs=[PageRun(0x500000, 4, 1, Path("/p"), 0)])
    stack = _vma(0x7FFE0000, 16, flags=0x122)  # MAP_GROWSDOWN
    argv = _vma(0x7FFF0000, 4)  # holds arg_start..env_end
    lib = _vma(0x400000, 1, kind=FILE_PRIVATE, flags=0x02, path="/bin/true")
    shared = _vma(0x600000, 1, kind=FILE_SHARED, flags=0x01, path="/f")
    wipe = _vma(0x700000, 2)
    wipe.madv = 1 << 18  # MADV_WIPEONFORK
    mm = _mm([lib, heap, shared, wipe, stack, argv])
    assert kmod.copy_vmas(mm) == {lib.start, stack.start, argv.start, wipe.start}


def test_fragmented_vmas_fall_back_to_copy(monkeypatch) -> None:
    """Each pages-image piece is a kernel VMA: past half of vm.max_map_count the most fragmented
    VMAs are copied instead (else the module's build would fail after the teardown)."""
    sparse = _vma(0x10000000, 80000, runs=[PageRun(0x10000000 + 2 * i * PAGE, 1, 1, Path("/p"), i * PAGE)
                                            for i in range(40000)])
    dense = _vma(0x40000000, 1000, runs=[PageRun(0x40000000, 1000, 1, Path("/p"), 40000 * PAGE)])
    assert kmod._pieces(sparse) == 40000 and kmod._pieces(dense) == 1
    mm = _mm([sparse, dense])
    assert kmod.copy_vmas(mm) == {sparse.start}
    monkeypatch.setenv("SPICE_KMOD_MODE", "copy")
    assert kmod.copy_vmas(mm) == {sparse.start, dense.start}


def test_working_set_clipped_to_vmas() -> None:
    a, b = _vma(0x10000, 4), _vma(0x20000, 4)
    ws = [(0x1F000, 3, True), (0x11000, 1, False), (0x30000, 2, True), (0x12000, 1, False)]
    # 0x1f000+3 pages: only its part in b; 0x30000: outside every VMA
    assert kmod.clip_ws(ws, [a, b]) == [(0x11000, 1, 0), (0x12000, 1, 0), (0x20000, 2, kmod.WS_WRITE)]
    # across two adjacent VMAs: one entry per VMA
    c = _vma(0x14000, 4)
    assert kmod.clip_ws([(0x13000, 2, True)], [a, c]) == [(0x13000, 1, 1), (0x14000, 1, 1)]


def test_auxv_trimmed_and_terminated() -> None:
    assert kmod._auxv([33, 1, 16, 2, 0, 0, 0, 0], 1) == [33, 1, 16, 2, 0, 0]
    with pytest.raises(SpiceError, match="auxv words"):
        kmod._auxv(list(range(1, 70)) + [0], 1)


def test_working_set_file(tmp_path: Path) -> None:
    (tmp_path / "mm-5.img").write_bytes(b"mm")
    (tmp_path / "pagemap-5.img").write_bytes(b"pm")
    d = ImageDir(tmp_path)
    assert workingset.load(d, 5) is None  # no recording
    doc = {"format": "spice-working-set", "version": 1, "tasks": {"5": {
        "digest": workingset.digest(d, 5), "pages": 3, "written": 1,
        "ranges": [["0x10000", 2, "r"], ["0x20000", 1, "w"]]}}}
    (tmp_path / workingset.FILE_NAME).write_text(json.dumps(doc))
    assert workingset.load(d, 5) == [(0x10000, 2, False), (0x20000, 1, True)]
    assert workingset.load(d, 6) is None  # another task
    warnings: list[str] = []
    orig = log.warn
    try:
        log.warn = lambda where, msg: warnings.append(msg)  # type: ignore[method-assign]
        (tmp_path / "mm-5.img").write_bytes(b"mm2")  # dumped again: stale
        assert workingset.load(d, 5) is None and "recorded for other images" in warnings[-1]
        (tmp_path / workingset.FILE_NAME).write_text("{not json")
        assert workingset.load(d, 5) is None and "unreadable" in warnings[-1]
        doc["tasks"]["5"]["digest"] = workingset.digest(d, 5)
        doc["tasks"]["5"]["ranges"] = [["0x10001", 1, "r"]]
        (tmp_path / workingset.FILE_NAME).write_text(json.dumps(doc))
        assert workingset.load(d, 5) is None and "bad range" in warnings[-1]
    finally:
        log.warn = orig  # type: ignore[method-assign]


def test_backend_choice(monkeypatch) -> None:
    monkeypatch.setattr(kmod, "_probe", (False, "/dev/spice: module not loaded"))
    assert run.choose_backend("auto") is ptrace_backend
    assert run.choose_backend("ptrace") is ptrace_backend
    with pytest.raises(SpiceError, match="--backend kmod: /dev/spice: module not loaded"):
        run.choose_backend("kmod")
    with pytest.raises(SpiceError, match="--record-working-set: /dev/spice"):
        run.choose_backend("auto", record=True)
    with pytest.raises(SpiceError, match="needs the kmod backend"):
        run.choose_backend("ptrace", record=True)
    monkeypatch.setattr(kmod, "_probe", (True, ""))
    monkeypatch.setattr(run, "module_loaded", lambda: True)
    b = run.choose_backend("auto")
    assert isinstance(b, kmod.Backend) and not b.strict and not b.record
    b = run.choose_backend("kmod", record=True)
    assert isinstance(b, kmod.Backend) and b.strict and b.record
