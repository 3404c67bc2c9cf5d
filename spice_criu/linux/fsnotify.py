# SPDX-License-Identifier: MIT
"""inotify(7) and open_by_handle_at(2): what dumping and restoring inotify watches needs.

The kernel names a watched inode by a file handle (/proc/PID/fdinfo); the dump opens it through
that handle to learn its path, the restore adds watches until each gets its dumped number back.
"""

from __future__ import annotations

import ctypes
import os

from .syscalls import NR, syscall

IN_NONBLOCK, IN_CLOEXEC = os.O_NONBLOCK, os.O_CLOEXEC
IN_IGNORED = 0x8000
O_PATH = 0o10000000


def init1(flags: int) -> int:
    return syscall(NR.inotify_init1, flags)


def add_watch(fd: int, path: str, mask: int) -> int:
    name = ctypes.create_string_buffer(os.fsencode(path))  # referenced until the call returns
    return syscall(NR.inotify_add_watch, fd, ctypes.addressof(name), mask)


def rm_watch(fd: int, wd: int) -> None:
    syscall(NR.inotify_rm_watch, fd, wd)


def open_by_handle(mount_fd: int, handle_type: int, handle: bytes, flags: int = O_PATH | os.O_CLOEXEC) -> int:
    """open_by_handle_at(2) (needs CAP_DAC_READ_SEARCH): struct file_handle is the handle's size,
    its type, and its bytes."""
    buf = ctypes.create_string_buffer(
        len(handle).to_bytes(4, "little") + handle_type.to_bytes(4, "little", signed=True) + handle)
    return syscall(NR.open_by_handle_at, mount_fd, ctypes.addressof(buf), flags)
