# SPDX-License-Identifier: MIT
"""linux.prctl in a forked child (the settings are per process): names, subreaper, pdeath signal,
and PR_SET_MM_MAP re-installing the child's own mm layout."""

from __future__ import annotations

import ctypes
import os
import signal
import traceback

from spice_criu.linux import prctl
from spice_criu.linux.syscalls import libc


def in_child(fn) -> int:
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            code = fn()
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def has_cap(bit: int) -> bool:
    with open("/proc/self/status") as f:
        eff = next(int(ln.split()[1], 16) for ln in f if ln.startswith("CapEff:"))
    return bool(eff >> bit & 1)


def test_simple_settings():
    def child() -> int:
        prctl.set_name("spice-test-name-too-long")
        assert prctl.get_name() == b"spice-test-name"
        assert not prctl.get_child_subreaper()
        prctl.set_child_subreaper(True)
        assert prctl.get_child_subreaper()
        prctl.set_pdeathsig(signal.SIGUSR2)
        assert prctl.get_pdeathsig() == signal.SIGUSR2
        prctl.set_dumpable(0)
        assert prctl.get_dumpable() == 0
        prctl.set_dumpable(1)
        assert prctl.get_tid_address() != 0
        with open("/proc/self/comm") as f:
            assert f.read() == "spice-test-name\n"
        return 0

    assert in_child(child) == 0


def test_set_mm_map_with_current_layout():
    assert prctl.mm_map_size() == ctypes.sizeof(prctl.PrctlMmMap) == 104

    def child() -> int:
        with open("/proc/self/stat") as f:
            st = f.read().rsplit(")", 1)[1].split()
        field = lambda n: int(st[n - 3])  # noqa: E731  (man 5 proc numbering)
        with open("/proc/self/auxv", "rb") as f:
            auxv = f.read()
        abuf = ctypes.create_string_buffer(auxv, len(auxv))
        libc.sbrk.restype = ctypes.c_void_p
        mm = prctl.PrctlMmMap(
            start_code=field(26), end_code=field(27), start_data=field(45), end_data=field(46),
            start_brk=field(47), brk=libc.sbrk(0), start_stack=field(28), arg_start=field(48),
            arg_end=field(49), env_start=field(50), env_end=field(51), auxv=ctypes.addressof(abuf),
            auxv_size=len(auxv), exe_fd=0xFFFFFFFF)
        prctl.set_mm_map(mm)
        with open("/proc/self/auxv", "rb") as f:
            assert f.read() == auxv
        # the legacy one-field form needs CAP_SYS_RESOURCE (PR_SET_MM_MAP does not)
        try:
            prctl.set_mm(prctl.PR_SET_MM_ARG_END, field(49))
            return 0 if has_cap(24) else 1
        except PermissionError:
            return 1 if has_cap(24) else 0

    assert in_child(child) == 0
