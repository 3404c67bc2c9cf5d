# SPDX-License-Identifier: MIT
"""The dump side's pieces, each against the real thing: /proc parsers on crafted and live input,
CRIU's register and page-flag rules, fd classification, build-ids against readelf, object ids against
kcmp, and the image set's partial-marker protocol."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from spice_criu import vma as V
from spice_criu.dump import files, ids, mm, pages, proc, threads, timers
from spice_criu.dump.imgset import ImageSet
from spice_criu.errors import SpiceError
from spice_criu.images import codec
from spice_criu.images.imagedir import PARTIAL_MARKER
from spice_criu.linux import ptrace as pt
from spice_criu.linux.syscalls import NR


def test_parse_stat_comm_with_parens_and_spaces() -> None:
    fields = ["S"] + [str(i) for i in range(4, 53)]  # field N of proc(5) holds N
    line = "4242 (a) b (c) " + " ".join(fields) + "\n"
    st = proc.parse_stat(line)
    assert (st.pid, st.comm, st.state, st.ppid, st.pgid, st.sid) == (4242, "a) b (c", "S", 4, 5, 6)
    assert (st.flags, st.num_threads, st.start_time, st.start_code, st.start_brk) == (9, 20, 22, 26, 47)
    assert (st.start_data, st.env_end, st.exit_code) == (45, 51, 52)


def test_parse_stat_of_ourselves() -> None:
    st = proc.stat(os.getpid())
    assert st.pid == os.getpid() and st.ppid == os.getppid() and st.sid == os.getsid(0)
    assert st.start_code < st.end_code and st.arg_start < st.arg_end <= st.env_start < st.env_end


SMAPS = """\
55ccc9bd9000-55ccc9bda000 r--p 00000000 fe:00 5318291                    /bin/x
Size:                  4 kB
VmFlags: rd mr mw me dw sd
7f44f3d00000-7f44f3e00000 rw-s 00000000 00:01 409                        /dev/zero (deleted)
VmFlags: rd wr sh mr mw me ms
7f44f44c7000-7f44f44cb000 r--p 00000000 00:00 0                          [vvar]
VmFlags: rd mr pf io de dd
7f44f44cb000-7f44f44cd000 r--p 00000000 00:00 0                          [vvar_vclock]
VmFlags: rd mr pf io de dd
7ffeb5cb5000-7ffeb5cd6000 rw-p 00000000 00:00 0                          [stack]
VmFlags: rd wr mr mw me gd ac
"""


def test_parse_smaps_and_vvar_merge() -> None:
    lines = proc.parse_smaps(SMAPS)
    assert [ml.path for ml in lines] == ["/bin/x", "/dev/zero (deleted)", "[vvar]", "[vvar_vclock]", "[stack]"]
    assert lines[1].dev == os.makedev(0, 1) and lines[1].inode == 409 and "sh" in lines[1].vmflags
    merged = mm._merge_vvar(lines)
    assert [(hex(m.start), hex(m.end)) for m in merged if m.path == "[vvar]"] == [("0x7f44f44c7000", "0x7f44f44cd000")]
    assert len(merged) == 4


def test_parse_posix_timers() -> None:
    text = ("ID: 0\nsignal: 14/00007f0000001000\nnotify: signal/pid.77\nClockID: 1\n"
            "ID: 3\nsignal: 10/0000000000000000\nnotify: thread/tid.78\nClockID: 0\n"
            "ID: 4\nsignal: 0/0000000000000000\nnotify: none/pid.77\nClockID: 7\n")
    got = timers.parse_posix_timers(text)
    assert got[0] == {"it_id": 0, "si_signo": 14, "sival_ptr": 0x7F0000001000, "it_sigev_notify": 0, "clock_id": 1}
    assert got[1]["it_sigev_notify"] == timers.SIGEV_THREAD_ID and got[1]["notify_thread_id"] == 78
    assert got[2]["it_sigev_notify"] == timers.SIGEV_NONE and got[2]["clock_id"] == 7


def _regs(**kw: int) -> pt.UserRegs:
    r = pt.UserRegs()
    for k, v in kw.items():
        setattr(r, k, v & (1 << 64) - 1)
    return r


@pytest.mark.parametrize("err", [512, 513, 514])
def test_image_regs_rewinds_restartable_syscalls(err: int) -> None:
    r = threads.image_regs(_regs(orig_ax=NR.read, ax=-err, ip=0x1002))
    assert (r.ax, r.ip, r.orig_ax) == (NR.read, 0x1000, NR.read)


def test_image_regs_restart_block_becomes_eintr() -> None:
    r = threads.image_regs(_regs(orig_ax=NR.nanosleep, ax=-516, ip=0x1002))
    assert (r.ax, r.ip) == ((1 << 64) - 4, 0x1002)


def test_image_regs_untouched_outside_syscalls() -> None:
    for kw in ({"orig_ax": -1, "ax": -512, "ip": 0x1002}, {"orig_ax": NR.read, "ax": 5, "ip": 0x1002}):
        r = _regs(**kw)
        assert threads.image_regs(r) == r


def test_lazy_flags_follow_criu() -> None:
    vma = codec.pb("vma_entry")
    anon = vma(start=0x1000, end=0x3000, status=V.VMA_AREA_REGULAR | V.VMA_ANON_PRIVATE,
               flags=V.MAP_PRIVATE | V.MAP_ANONYMOUS)
    filep = vma(start=0x1000, end=0x3000, status=V.VMA_AREA_REGULAR | V.VMA_FILE_PRIVATE, flags=V.MAP_PRIVATE)
    vdso = vma(start=0x1000, end=0x3000, status=V.VMA_AREA_REGULAR | V.VMA_AREA_VDSO | V.VMA_ANON_PRIVATE,
               flags=V.MAP_PRIVATE | V.MAP_ANONYMOUS)
    vvar = vma(start=0x1000, end=0x3000, status=V.VMA_AREA_REGULAR | V.VMA_AREA_VVAR | V.VMA_ANON_PRIVATE,
               flags=V.MAP_PRIVATE | V.MAP_ANONYMOUS)
    shared = vma(start=0x1000, end=0x3000, status=V.VMA_AREA_REGULAR | V.VMA_FILE_SHARED, flags=V.MAP_SHARED)
    assert pages.can_be_lazy(anon) and not pages.can_be_lazy(filep) and not pages.can_be_lazy(vdso)
    assert [pages.dumpable(v) for v in (anon, filep, vdso, vvar, shared)] == [True, True, True, False, False]
    assert not pages.stack_pins_all([0x7FFD1234, 0x7FFE0FF8])
    assert pages.stack_pins_all([0x7FFD1234, 0x7FFE1000])


def test_page_tables_of_a_live_process() -> None:
    """Present, non-zero pages of our own anonymous mapping, found by PAGEMAP_SCAN (or pagemap)."""
    from spice_criu.linux import mman

    size = 16 * pages.PAGE
    addr = mman.mmap(0, size, mman.PROT_READ | mman.PROT_WRITE, mman.MAP_PRIVATE | mman.MAP_ANONYMOUS)
    try:
        import ctypes

        ctypes.memset(addr + 2 * pages.PAGE, 1, 3 * pages.PAGE)  # pages 2..4 hold data
        ctypes.c_char.from_address(addr + 8 * pages.PAGE).value  # noqa: B018 - page 8: the zero page
        pt_ = pages.PageTables(os.getpid())
        try:
            got = pt_.ranges(addr, addr + size, skip_file=False)
            pt_._scan_works = False  # and the same through /proc/PID/pagemap
            slow = pt_._pagemap(addr, addr + size, skip_file=False)
        finally:
            pt_.close()
            pages.PageTables._scan_works = None
        assert got == [(addr + 2 * pages.PAGE, addr + 5 * pages.PAGE)] == slow
    finally:
        mman.munmap(addr, size)


def test_classify_fds() -> None:
    r, w = os.pipe()
    s1, s2 = socket.socketpair()
    memfd = os.memfd_create("x")
    try:
        dev = files.os.fstat(memfd).st_dev

        def kind(fd: int) -> str:
            return files.classify(os.readlink(f"/proc/self/fd/{fd}"), os.fstat(fd), dev)

        assert kind(r) == kind(w) == "pipe"
        assert kind(s1.fileno()) == "socket"
        assert kind(memfd) == "memfd"
        with open(sys.executable, "rb") as f:
            assert kind(f.fileno()) == "reg"
        assert files.socket_details(s1.fileno()) == "unix stream"
        ev = os.eventfd(0)
        try:
            assert kind(ev) == "eventfd"
        finally:
            os.close(ev)
    finally:
        for fd in (r, w, memfd):
            os.close(fd)
        s1.close()
        s2.close()


def test_should_check_size() -> None:
    assert not files.should_check_size(os.O_WRONLY | os.O_APPEND)
    assert files.should_check_size(os.O_RDWR | os.O_APPEND) and files.should_check_size(os.O_WRONLY)


@pytest.mark.parametrize("path", ["/bin/true", "/usr/lib/x86_64-linux-gnu/libc.so.6"])
def test_build_id_matches_readelf(path: str) -> None:
    readelf = shutil.which("readelf")
    if readelf is None:
        pytest.fail("readelf (binutils) is needed to check build-ids")
    out = subprocess.run([readelf, "-n", path], capture_output=True, text=True, check=True).stdout
    want = bytes.fromhex(re.search(r"Build ID: ([0-9a-f]+)", out).group(1))
    fd = os.open(path, os.O_RDONLY)
    try:
        words = files.build_id(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)
    import struct

    assert struct.pack(f"<{len(words)}I", *words)[: len(want)] == want


def test_build_id_of_a_non_elf(tmp_path: Path) -> None:
    p = tmp_path / "x"
    p.write_bytes(b"\x7fELX" + b"\0" * 100)
    fd = os.open(p, os.O_RDONLY)
    try:
        assert files.build_id(fd, 104) is None
    finally:
        os.close(fd)


def test_file_ids_share_descriptions_not_inodes(tmp_path: Path) -> None:
    p = tmp_path / "f"
    p.write_text("x")
    a = os.open(p, os.O_RDONLY)
    b = os.dup(a)
    c = os.open(p, os.O_RDONLY)
    try:
        fi = files.FileIds()
        me = os.getpid()
        ida, new_a = fi.description(me, a, os.fstat(a), 0)
        idb, new_b = fi.description(me, b, os.fstat(b), 0)
        idc, new_c = fi.description(me, c, os.fstat(c), 0)
        assert new_a and not new_b and new_c and ida == idb != idc
        # a mapping of the same inode reuses the first description's id, as CRIU's cache does
        assert fi.special(os.fstat(a)) == (ida, False)
        assert fi.new() == idc + 1
    finally:
        for fd in (a, b, c):
            os.close(fd)


def test_file_ids_of_many_opens_of_one_file_take_log_n_kcmp_calls(tmp_path: Path, monkeypatch) -> None:
    """400 fds on one file (dev, ino and offset alike), opened 200 times and each dup'ed once: real
    kcmp tells the descriptions apart, and each lookup asks it about log2(n) times (CRIU's kid
    tree), not once per description met before (80,000 calls, ~200 ms of a dump)."""
    p = tmp_path / "f"
    p.write_text("x")
    calls = []
    real = files.kcmp.kcmp
    monkeypatch.setattr(files.kcmp, "kcmp", lambda *a: calls.append(a) or real(*a))
    opened = [os.open(p, os.O_RDONLY) for _ in range(200)]
    dups = [os.dup(fd) for fd in opened]
    try:
        fi = files.FileIds()
        me = os.getpid()
        first = [fi.description(me, fd, os.fstat(fd), 0) for fd in opened]
        again = [fi.description(me, fd, os.fstat(fd), 0) for fd in reversed(dups)]
        assert [i for i, _ in first] == list(range(1, 201)) and all(new for _, new in first)
        assert [i for i, _ in again] == list(range(200, 0, -1)) and not any(new for _, new in again)
        assert len(calls) <= 400 * 9, len(calls)  # log2(200) < 8: at most 8 + 1 each
    finally:
        for fd in opened + dups:
            os.close(fd)


def test_file_ids_without_kcmp_order_fall_back_to_asking_every_one(tmp_path: Path, monkeypatch) -> None:
    """Should kcmp once answer "different" without an order, every later lookup in that list asks
    each entry (a binary search in a list no longer in order would miss shared descriptions)."""
    p = tmp_path / "f"
    p.write_text("x")
    real = files.kcmp.kcmp
    calls = []

    def kcmp(*a: int) -> int:
        calls.append(a)
        order = real(*a)
        return 3 if order and len(calls) == 40 else order

    monkeypatch.setattr(files.kcmp, "kcmp", kcmp)
    opened = [os.open(p, os.O_RDONLY) for _ in range(20)]
    dups = [os.dup(fd) for fd in opened]
    try:
        fi = files.FileIds()
        me = os.getpid()
        first = [fi.description(me, fd, os.fstat(fd), 0)[0] for fd in opened]
        again = [fi.description(me, fd, os.fstat(fd), 0) for fd in reversed(dups)]
        assert first == list(range(1, 21))
        assert again == [(i, False) for i in range(20, 0, -1)]
    finally:
        for fd in opened + dups:
            os.close(fd)


def test_object_ids_against_kcmp() -> None:
    child = subprocess.Popen(["sleep", "30"])
    try:
        g = ids.Ids()
        assert (g.root_ids.vm_id, g.root_ids.files_id, g.root_ids.fs_id, g.root_ids.sighand_id) == (1, 1, 1, 1)
        assert [getattr(g.root_ids, f) for _, f in ids.NAMESPACES] == list(range(1, 9))
        t = g.task_ids(child.pid)
        assert (t.vm_id, t.files_id, t.fs_id, t.sighand_id) == (2, 2, 2, 2)
        assert t.net_ns_id == g.root_ids.net_ns_id
    finally:
        child.kill()
        child.wait()


def test_task_in_another_namespace_is_refused() -> None:
    """A namespace kind spice cannot dump (user: neither can it restore one) is refused by name."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.fail("unshare (util-linux) is needed")
    child = subprocess.Popen([unshare, "-U", "sleep", "30"])
    try:
        import time

        deadline = time.monotonic() + 5
        while os.readlink(f"/proc/{child.pid}/ns/user") == os.readlink("/proc/self/ns/user"):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        with pytest.raises(SpiceError, match=f"task {child.pid} lives in its own user namespace"):
            ids.Ids().task_ids(child.pid)
    finally:
        child.kill()
        child.wait()


def test_image_set_marker_protocol(tmp_path: Path) -> None:
    s = ImageSet(tmp_path)
    (tmp_path / "inventory.img").write_bytes(b"stale")
    s.begin()
    assert (tmp_path / PARTIAL_MARKER).exists() and not (tmp_path / "inventory.img").exists()
    s.add("pstree.img", "PSTREE", codec.pb("pstree_entry")(pid=1, ppid=0, pgid=1, sid=1))
    s.commit(codec.pb("inventory_entry")(img_version=2))
    assert not (tmp_path / PARTIAL_MARKER).exists()
    assert codec.load(tmp_path / "pstree.img").entries[0].msg.pid == 1
    assert codec.load(tmp_path / "inventory.img").entries[0].msg.img_version == 2


def test_image_set_abort_cleans_up(tmp_path: Path) -> None:
    s = ImageSet(tmp_path)
    s.begin()
    Path(s.file("pages-1.img")).write_bytes(b"x" * 4096)
    s.abort("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == [PARTIAL_MARKER]
    assert "boom" in (tmp_path / PARTIAL_MARKER).read_text()


def test_image_set_needs_the_directory(tmp_path: Path) -> None:
    with pytest.raises(SpiceError, match="does not exist"):
        ImageSet(tmp_path / "missing")


CLONE_VM_PROG = r"""
#define _GNU_SOURCE
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <unistd.h>
static char stack[65536];
static int child(void *a) { (void)a; for (;;) pause(); return 0; }
int main(void) {
    int pid = clone(child, stack + sizeof(stack), CLONE_VM | SIGCHLD, NULL);
    printf("%d\n", pid);
    fflush(stdout);
    for (;;) pause();
}
"""


def test_tasks_sharing_memory_are_refused(tmp_path: Path) -> None:
    """Two processes with one mm (clone(CLONE_VM) without CLONE_THREAD): CRIU refuses, so does spice."""
    src = tmp_path / "clonevm.c"
    src.write_text(CLONE_VM_PROG)
    subprocess.run(["gcc", "-O1", "-o", str(tmp_path / "clonevm"), str(src)], check=True)
    parent = subprocess.Popen([str(tmp_path / "clonevm")], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    try:
        g = ids.Ids()
        g.task_ids(parent.pid)
        with pytest.raises(SpiceError, match=f"task {child} shares its memory \\(CLONE_VM\\) with task {parent.pid}"):
            g.task_ids(child)
    finally:
        os.kill(child, 9)
        parent.kill()
        parent.wait()


def test_run_id_is_a_random_version_4_uuid() -> None:
    import uuid

    from spice_criu.dump.inventory import new_run_id

    ids = {new_run_id() for _ in range(200)}
    assert len(ids) == 200
    for s in ids:
        u = uuid.UUID(s)
        assert str(u) == s and u.version == 4 and u.variant == uuid.RFC_4122


@pytest.mark.parametrize("threads", [1, 2])
def test_write_runs_copies_across_chunks_and_unreadable_pages(tmp_path: Path, monkeypatch, threads: int) -> None:
    """Runs larger than the copy buffer, a chunk boundary inside a run, and a PROT_NONE page
    (process_vm_readv stops there: /proc/PID/mem reads it) all land in pages-N.img in order, and
    the preallocated file ends exactly after the last page; copied by one thread, or by two (each
    half of the file: forced here, whatever the size and the CPUs), after and before data the
    image got through write()."""
    import ctypes

    from spice_criu.linux import mman

    if threads == 2:
        monkeypatch.setattr(pages, "PARALLEL_MIN", 0)
        monkeypatch.setattr(pages, "_cpus", lambda: 2)

    npages = 2 * pages.CHUNK // pages.PAGE + 40
    size = npages * pages.PAGE
    addr = mman.mmap(0, size, mman.PROT_READ | mman.PROT_WRITE, mman.MAP_PRIVATE | mman.MAP_ANONYMOUS)
    try:
        for i in range(npages):
            ctypes.memset(addr + i * pages.PAGE, i % 251 + 1, pages.PAGE)
        hidden = addr + (npages - 10) * pages.PAGE
        mman.mprotect(hidden, pages.PAGE, mman.PROT_NONE)
        runs = [(addr, 3, pages.PE_PRESENT), (addr + 5 * pages.PAGE, npages - 20, pages.PE_PRESENT),
                (hidden, 2, pages.PE_PRESENT)]
        images = ImageSet(tmp_path)
        images.begin()
        img = pages.PagesImage(images, "pagemap-1.img", 1, pages.Stats())
        try:
            img.write(b"<" * pages.PAGE)
            pages.write_runs(os.getpid(), runs, img)
            img.write(b">" * pages.PAGE)
        finally:
            img.close()
        mman.mprotect(hidden, pages.PAGE, mman.PROT_READ)
        want = b"".join(ctypes.string_at(a, n * pages.PAGE) for a, n, _ in runs)
        assert (tmp_path / "pages-1.img").read_bytes() == b"<" * pages.PAGE + want + b">" * pages.PAGE
        assert [(e.vaddr, e.nr_pages) for e in img.entries[1:]] == [(a, n) for a, n, _ in runs]
        assert img.pages == sum(n for _, n, _ in runs) and img.stats.written == img.pages
    finally:
        mman.munmap(addr, size)
