# SPDX-License-Identifier: MIT
"""The program every restored task starts as: a 200-byte static ELF that sleeps in pause().

A fork of the restorer would carry the whole Python interpreter (tens of MiB of mappings, page
tables copied and shared copy-on-write), all of which every task (the children are forked from the
root) would have to tear down again before its dumped address space can be built. Instead the root
is started vfork-style straight into this stub (clone3.spawn_exec: nothing copied): every task
enters the restore with the stub's one page, its stack and the kernel's vDSO/vvar. The stub never
runs past pause(): the restorer seizes it there and injects everything else.
"""

from __future__ import annotations

import os
import struct

BASE = 0x10000  # the stub's one page; restore code moves around it like around any other mapping
_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")
_PT_LOAD, _PT_GNU_STACK = 1, 0x6474E551
_PF_X, _PF_W, _PF_R = 1, 2, 4
# loop: pause(); goto loop  -- a `syscall` the restorer's first injections can reuse
_CODE = bytes.fromhex(
    "b822000000"  # mov eax, 34 (pause)
    "0f05"  # syscall
    "ebf7"  # jmp loop
)
NAME = "spice-stub"
_CODE_OFF = 64 + 2 * 56  # after the ELF header and the two program headers
SYSCALL_SITE = BASE + _CODE_OFF + 5  # the stub's `syscall`: where the first injections run


def elf() -> bytes:
    """The stub's executable: one read+exec PT_LOAD holding the headers and the code, and a
    non-executable stack (PT_GNU_STACK)."""
    code_off = _EHDR.size + 2 * _PHDR.size
    assert code_off == _CODE_OFF
    size = code_off + len(_CODE)
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)  # 64-bit, little endian, SysV
    ehdr = _EHDR.pack(ident, 2, 62, 1, BASE + code_off, _EHDR.size, 0, 0, _EHDR.size, _PHDR.size, 2, 0, 0, 0)
    load = _PHDR.pack(_PT_LOAD, _PF_R | _PF_X, 0, BASE, BASE, size, size, 0x1000)
    stack = _PHDR.pack(_PT_GNU_STACK, _PF_R | _PF_W, 0, 0, 0, 0, 0, 16)
    return ehdr + load + stack + _CODE


def memfd() -> int:
    """A close-on-exec memfd holding the stub, for exec() in a freshly forked task."""
    fd = os.memfd_create(NAME, os.MFD_CLOEXEC)
    try:
        os.write(fd, elf())
    except BaseException:
        os.close(fd)
        raise
    return fd

