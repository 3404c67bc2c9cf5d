# SPDX-License-Identifier: MIT
"""Restore backends: how a task's memory, sigactions and CPU state get installed.

ptrace: by syscalls executed inside the task (any kernel). kmod: one ioctl on /dev/spice (the Spice
way: address space built in-kernel from the page cache, working set prefaulted).
"""

import os

DEVICE = "/dev/spice"  # the kernel module's device (kmod.py speaks to it)


def module_loaded() -> bool:
    """Whether the kernel module is there at all: without it, the kmod backend need not be imported."""
    return os.path.exists(DEVICE)
