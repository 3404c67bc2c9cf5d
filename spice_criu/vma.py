# SPDX-License-Identifier: MIT
"""CRIU's vma_entry.status bits (criu/include/image.h) and Linux mmap constants, shared by dump and restore."""

from __future__ import annotations

VMA_AREA_REGULAR = 1 << 0
VMA_AREA_STACK = 1 << 1
VMA_AREA_VSYSCALL = 1 << 2
VMA_AREA_VDSO = 1 << 3
VMA_AREA_HEAP = 1 << 5
VMA_FILE_PRIVATE = 1 << 6
VMA_FILE_SHARED = 1 << 7
VMA_ANON_SHARED = 1 << 8
VMA_ANON_PRIVATE = 1 << 9
VMA_AREA_SYSVIPC = 1 << 10
VMA_AREA_SOCKET = 1 << 11
VMA_AREA_VVAR = 1 << 12
VMA_AREA_AIORING = 1 << 13
VMA_AREA_MEMFD = 1 << 14
VMA_AREA_SHSTK = 1 << 15
VMA_AREA_GUARD = 1 << 16
VMA_AREA_UPROBES = 1 << 17

PROT_READ, PROT_WRITE, PROT_EXEC = 1, 2, 4
MAP_SHARED, MAP_PRIVATE = 0x01, 0x02
MAP_FIXED = 0x10
MAP_ANONYMOUS = 0x20
MAP_GROWSDOWN = 0x100
MAP_NORESERVE = 0x4000
MAP_FIXED_NOREPLACE = 0x100000
#: the mmap flags an image may carry that restore re-applies
MAP_RESTORABLE = MAP_SHARED | MAP_PRIVATE | MAP_ANONYMOUS | MAP_GROWSDOWN | MAP_NORESERVE

PAGE_SIZE = 4096

#: status bits spice knows how to restore; anything else fails the restore up front
UNSUPPORTED_STATUS = {
    VMA_AREA_SYSVIPC: "SysV IPC shared memory mapping",
    VMA_AREA_SOCKET: "packet socket ring mapping",
    VMA_AREA_AIORING: "AIO ring mapping",
    VMA_AREA_SHSTK: "shadow stack",
    VMA_AREA_UPROBES: "uprobes area",
}
