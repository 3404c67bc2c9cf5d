# SPDX-License-Identifier: MIT
"""/dev/spice driven from Python (fcntl.ioctl + ctypes), run inside the kmod-ci guest.

Proves that the Python side can build the uapi structs byte-exactly: VERSION, a rejected
request (EINVAL, with the failing table reported back), and a valid dry-run request.
Runs under pytest or as a plain script (prints "N passed, N failed").
"""

import ctypes
import errno
import fcntl
import os

DEV = os.environ.get("SPICE_DEV", "/dev/spice")
STATS = "/sys/class/misc/spice/stats"
U64, U32, S32 = ctypes.c_uint64, ctypes.c_uint32, ctypes.c_int32


class Version(ctypes.Structure):
    _fields_ = [
        ("abi_version", U32),
        ("size", U32),
        ("req_hdr_size", U32),
        ("xsave_size", U32),
        ("xfeatures", U64),
        ("features", U64),
        ("max_files", U32),
        ("max_vmas", U32),
        ("max_sources", U32),
        ("max_ws", U32),
        ("max_keep", U32),
        ("max_total_size", U32),
        ("reserved", U64 * 4),
    ]


class Table(ctypes.Structure):
    _fields_ = [("offset", U32), ("count", U32), ("entry_size", U32), ("reserved", U32)]


class Mm(ctypes.Structure):
    _fields_ = [
        (n, U64)
        for n in (
            "start_code",
            "end_code",
            "start_data",
            "end_data",
            "start_brk",
            "brk",
            "start_stack",
            "arg_start",
            "arg_end",
            "env_start",
            "env_end",
        )
    ] + [("auxv_words", U32), ("exe_file", S32), ("auxv", U64 * 64)]


class Sigaction(ctypes.Structure):
    _fields_ = [("handler", U64), ("flags", U64), ("restorer", U64), ("mask", U64)]


class Task(ctypes.Structure):
    _fields_ = [
        ("blocked", U64),
        ("sigaction_mask", U64),
        ("ss_sp", U64),
        ("ss_size", U64),
        ("ss_flags", U32),
        ("reserved0", U32),
        ("clear_tid_addr", U64),
        ("robust_list", U64),
        ("robust_list_len", U64),
        ("rseq", U64),
        ("rseq_len", U32),
        ("rseq_sig", U32),
        ("act", Sigaction * 64),
    ]


REG_NAMES = (
    "r15 r14 r13 r12 bp bx r11 r10 r9 r8 ax cx dx si di orig_ax ip cs flags sp ss fs_base gs_base ds es fs gs"
).split()


class Regs(ctypes.Structure):
    _fields_ = [(n, U64) for n in REG_NAMES]


class Restore(ctypes.Structure):
    _fields_ = [
        ("magic", U32),
        ("version", U32),
        ("hdr_size", U32),
        ("total_size", U32),
        ("flags", U64),
        ("prefault", U32),
        ("reserved0", U32),
        ("files", Table),
        ("vmas", Table),
        ("sources", Table),
        ("ws", Table),
        ("keep", Table),
        ("xsave", Table),
        ("mm", Mm),
        ("task", Task),
        ("regs", Regs),
        ("reserved", U64 * 7),
        ("err_table", U32),
        ("err_index", U32),
    ]


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (0xBD << 8) | nr


IOC_VERSION = _ioc(2, 0x01, ctypes.sizeof(Version))
IOC_RESTORE = _ioc(3, 0x02, ctypes.sizeof(Restore))
REQ_MAGIC, ABI_VERSION = 0x51455253, 1
RF_DRY_RUN, RF_REGS = 1 << 0, 1 << 1
ERR_HDR, ERR_REGS = 1, 10


def _stat(name: str) -> int:
    with open(f"{STATS}/{name}") as f:
        return int(f.read())


def _version() -> Version:
    v = Version()
    fd = os.open(DEV, os.O_RDWR)
    try:
        assert fcntl.ioctl(fd, IOC_VERSION, v, True) == 0
    finally:
        os.close(fd)
    return v


def _request() -> Restore:
    r = Restore()
    r.magic, r.version = REQ_MAGIC, ABI_VERSION
    r.hdr_size = r.total_size = ctypes.sizeof(Restore)
    r.flags = RF_DRY_RUN | RF_REGS
    r.mm.exe_file = -1
    r.task.ss_flags = 2  # SS_DISABLE
    r.regs.cs, r.regs.ss, r.regs.flags = 0x33, 0x2B, 0x202
    r.regs.ip, r.regs.sp = 0x400000, 0x7FFF0000
    return r


def _restore(r: Restore) -> int:
    fd = os.open(DEV, os.O_RDWR)
    try:
        fcntl.ioctl(fd, IOC_RESTORE, r, True)
        return 0
    except OSError as e:
        return e.errno
    finally:
        os.close(fd)


def test_version():
    v = _version()
    assert v.abi_version == ABI_VERSION
    assert v.size == ctypes.sizeof(Version)
    assert v.req_hdr_size == ctypes.sizeof(Restore)  # our layout is the kernel's
    assert v.xsave_size >= 512 and v.xfeatures & 3 == 3


def test_bad_magic_is_einval_and_reported():
    r = _request()
    r.magic ^= 1
    assert _restore(r) == errno.EINVAL
    assert r.err_table == ERR_HDR


def test_bad_code_selector_is_einval_at_regs():
    r = _request()
    r.regs.cs = 0x23  # 32-bit code segment
    err = _restore(r)
    assert err == errno.EINVAL, (err, r.err_table, r.err_index)
    assert r.err_table == ERR_REGS, (r.err_table, r.err_index)


def test_valid_dry_run():
    before = _stat("dry_runs")
    r = _request()
    err = _restore(r)
    assert err == 0, (os.strerror(err), r.err_table, r.err_index)
    assert _stat("dry_runs") == before + 1
    assert _stat("files_held") == 0 and _stat("requests_live") == 0


if __name__ == "__main__":
    passed = failed = 0
    for name, fn in sorted(globals().items()):
        if name.startswith("test_") and callable(fn):
            try:
                fn()
                passed += 1
                print(f"ok   {name}")
            except Exception as e:  # report every failure, keep going
                failed += 1
                print(f"FAIL {name}: {e!r}")
    print(f"{passed} passed, {failed} failed")
    raise SystemExit(1 if failed else 0)
