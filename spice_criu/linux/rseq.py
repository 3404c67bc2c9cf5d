# SPDX-License-Identifier: MIT
"""Restartable sequences ABI: struct rseq, struct rseq_cs, flags and glibc's x86 signature.

A task interrupted inside an rseq critical section must resume at its abort_ip (the kernel does this
on the way back to user mode); anything that moves a stopped task's ip applies the same fixup.
"""

from __future__ import annotations

import ctypes

RSEQ_SIG = 0x53053053  # glibc/librseq on x86
RSEQ_FLAG_UNREGISTER = 1
RSEQ_CPU_ID_UNINITIALIZED = -1
RSEQ_CPU_ID_REGISTRATION_FAILED = -2
RSEQ_CS_OFFSET = 8  # offsetof(struct rseq, rseq_cs)


class RseqCs(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("flags", ctypes.c_uint32), ("start_ip", ctypes.c_uint64),
                ("post_commit_offset", ctypes.c_uint64), ("abort_ip", ctypes.c_uint64)]

    def contains(self, ip: int) -> bool:
        return self.start_ip <= ip < self.start_ip + self.post_commit_offset


class Rseq(ctypes.Structure):
    """struct rseq (original 32-byte layout; newer kernels append fields, see rseq_abi_size)."""

    _fields_ = [("cpu_id_start", ctypes.c_uint32), ("cpu_id", ctypes.c_int32), ("rseq_cs", ctypes.c_uint64),
                ("flags", ctypes.c_uint32), ("node_id", ctypes.c_uint32), ("mm_cid", ctypes.c_uint32),
                ("_pad", ctypes.c_uint32)]


assert ctypes.sizeof(RseqCs) == 32 and Rseq.rseq_cs.offset == RSEQ_CS_OFFSET
