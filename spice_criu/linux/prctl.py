# SPDX-License-Identifier: MIT
"""prctl(2): subreaper, names, pdeath signal, dumpable, PR_SET_MM / PR_SET_MM_MAP (struct prctl_mm_map).

These act on the calling task; restore runs the PR_SET_MM ones inside the target via inject.Remote,
passing the struct through the scratch area (bytes(PrctlMmMap(...))).
"""

from __future__ import annotations

import ctypes

from .syscalls import NR, syscall

PR_SET_PDEATHSIG = 1
PR_GET_PDEATHSIG = 2
PR_GET_DUMPABLE = 3
PR_SET_DUMPABLE = 4
PR_GET_KEEPCAPS = 7
PR_SET_KEEPCAPS = 8
PR_GET_TIMING = 13
PR_SET_NAME = 15
PR_GET_NAME = 16
PR_GET_SECCOMP = 21
PR_SET_SECCOMP = 22
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_GET_TSC = 25
PR_GET_SECUREBITS = 27
PR_SET_SECUREBITS = 28
PR_SET_TIMERSLACK = 29
PR_GET_TIMERSLACK = 30
PR_MCE_KILL = 33
PR_MCE_KILL_GET = 34
PR_SET_MM = 35
PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
PR_GET_TID_ADDRESS = 40
PR_SET_THP_DISABLE = 41
PR_GET_THP_DISABLE = 42
PR_CAP_AMBIENT = 47
PR_SVE_SET_VL = 50
PR_SET_SPECULATION_CTRL = 53
PR_GET_SPECULATION_CTRL = 52
PR_SET_IO_FLUSHER = 57
PR_GET_IO_FLUSHER = 58
PR_SET_SYSCALL_USER_DISPATCH = 59
PR_SET_VMA = 0x53564D41  # 5.17+
PR_SET_VMA_ANON_NAME = 0
PR_SET_MDWE = 65  # 6.3+
PR_GET_MDWE = 66
PR_GET_AUXV = 0x41555856  # 6.4+
PR_SET_MEMORY_MERGE = 67  # 6.4+
PR_GET_MEMORY_MERGE = 68

PR_CAP_AMBIENT_IS_SET = 1

# PR_SET_MM sub-options
PR_SET_MM_START_CODE = 1
PR_SET_MM_END_CODE = 2
PR_SET_MM_START_DATA = 3
PR_SET_MM_END_DATA = 4
PR_SET_MM_START_STACK = 5
PR_SET_MM_START_BRK = 6
PR_SET_MM_BRK = 7
PR_SET_MM_ARG_START = 8
PR_SET_MM_ARG_END = 9
PR_SET_MM_ENV_START = 10
PR_SET_MM_ENV_END = 11
PR_SET_MM_AUXV = 12
PR_SET_MM_EXE_FILE = 13
PR_SET_MM_MAP = 14
PR_SET_MM_MAP_SIZE = 15

TASK_COMM_LEN = 16


class PrctlMmMap(ctypes.Structure):
    """struct prctl_mm_map (include/uapi/linux/prctl.h), 104 bytes."""

    _fields_ = [
        ("start_code", ctypes.c_uint64),
        ("end_code", ctypes.c_uint64),
        ("start_data", ctypes.c_uint64),
        ("end_data", ctypes.c_uint64),
        ("start_brk", ctypes.c_uint64),
        ("brk", ctypes.c_uint64),
        ("start_stack", ctypes.c_uint64),
        ("arg_start", ctypes.c_uint64),
        ("arg_end", ctypes.c_uint64),
        ("env_start", ctypes.c_uint64),
        ("env_end", ctypes.c_uint64),
        ("auxv", ctypes.c_uint64),  # __u64 *auxv: pointer to the auxv words
        ("auxv_size", ctypes.c_uint32),  # in bytes
        ("exe_fd", ctypes.c_uint32),  # -1: leave the exe link alone
    ]


assert ctypes.sizeof(PrctlMmMap) == 104


def prctl(option: int, a2: int = 0, a3: int = 0, a4: int = 0, a5: int = 0) -> int:
    return syscall(NR.prctl, option, a2, a3, a4, a5)


def set_child_subreaper(on: bool = True) -> None:
    prctl(PR_SET_CHILD_SUBREAPER, int(on))


def get_child_subreaper() -> bool:
    v = ctypes.c_int()
    prctl(PR_GET_CHILD_SUBREAPER, ctypes.addressof(v))
    return bool(v.value)


def set_name(name: str | bytes) -> None:
    raw = name.encode() if isinstance(name, str) else name
    buf = ctypes.create_string_buffer(raw[: TASK_COMM_LEN - 1], TASK_COMM_LEN)
    prctl(PR_SET_NAME, ctypes.addressof(buf))


def get_name() -> bytes:
    buf = ctypes.create_string_buffer(TASK_COMM_LEN)
    prctl(PR_GET_NAME, ctypes.addressof(buf))
    return buf.value


def set_pdeathsig(sig: int) -> None:
    prctl(PR_SET_PDEATHSIG, sig)


def get_pdeathsig() -> int:
    v = ctypes.c_int()
    prctl(PR_GET_PDEATHSIG, ctypes.addressof(v))
    return v.value


def set_dumpable(v: int) -> None:
    prctl(PR_SET_DUMPABLE, v)


def get_dumpable() -> int:
    return prctl(PR_GET_DUMPABLE)


def get_tid_address() -> int:
    v = ctypes.c_uint64()
    prctl(PR_GET_TID_ADDRESS, ctypes.addressof(v))
    return v.value


def mm_map_size() -> int:
    """sizeof(struct prctl_mm_map) as the kernel knows it (PR_SET_MM_MAP_SIZE)."""
    v = ctypes.c_uint()
    prctl(PR_SET_MM, PR_SET_MM_MAP_SIZE, ctypes.addressof(v))
    return v.value


def set_mm(field: int, value: int) -> None:
    prctl(PR_SET_MM, field, value)


def set_mm_map(mm: PrctlMmMap) -> None:
    """Install all mm boundaries, auxv and (optionally) exe at once (CAP_SYS_RESOURCE or
    CAP_CHECKPOINT_RESTORE for exe_fd)."""
    prctl(PR_SET_MM, PR_SET_MM_MAP, ctypes.addressof(mm), ctypes.sizeof(mm))
