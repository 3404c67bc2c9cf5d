# SPDX-License-Identifier: MIT
"""Restore backends: how a task's memory, sigactions and CPU state get installed.

ptrace: by syscalls executed inside the task (any kernel). kmod: one ioctl on /dev/spice (the Spice
way: address space built in-kernel from the page cache, working set prefaulted).
"""
