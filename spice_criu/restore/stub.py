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

import errno
import os
import struct

from ..errors import SpiceError

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
_CODE_OFF = _EHDR.size + 2 * _PHDR.size  # after the ELF header and the two program headers
SYSCALL_SITE = BASE + _CODE_OFF + 5  # the stub's `syscall`: where the first injections run


def elf() -> bytes:
    """The stub's executable: one read+exec PT_LOAD holding the headers and the code, and a
    non-executable stack (PT_GNU_STACK)."""
    size = _CODE_OFF + len(_CODE)
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)  # 64-bit, little endian, SysV
    ehdr = _EHDR.pack(ident, 2, 62, 1, BASE + _CODE_OFF, _EHDR.size, 0, 0, _EHDR.size, _PHDR.size, 2, 0, 0, 0)
    load = _PHDR.pack(_PT_LOAD, _PF_R | _PF_X, 0, BASE, BASE, size, size, 0x1000)
    stack = _PHDR.pack(_PT_GNU_STACK, _PF_R | _PF_W, 0, 0, 0, 0, 0, 16)
    return ehdr + load + stack + _CODE


MFD_EXEC = 0x10  # Linux 6.3: an executable memfd even where vm.memfd_noexec = 1 makes them noexec
#: where the stub goes when memfds cannot be executed at all (vm.memfd_noexec = 2): an unnamed
#: O_TMPFILE in the first of these that allows it
TMPFILE_DIRS = ("/dev/shm", "/tmp", "/run", "/var/tmp")


def program() -> int:
    """A close-on-exec fd holding the stub, for execveat() in a freshly started task: a memfd
    (asked for executable: Linux 6.3's vm.memfd_noexec=1 makes them noexec by default), or, where
    executable memfds are refused, an unnamed temporary file. Its exec may still fail (a noexec
    mount): spawn_root then says the task could not exec the stub."""
    try:
        fd = os.memfd_create(NAME, os.MFD_CLOEXEC | MFD_EXEC)
    except OSError as e:
        if e.errno != errno.EINVAL:  # EACCES/EPERM: vm.memfd_noexec = 2
            return _tmpfile()
        fd = os.memfd_create(NAME, os.MFD_CLOEXEC)  # before 6.3: no MFD_EXEC, every memfd executable
    return _filled(fd)


def _tmpfile() -> int:
    """The stub in an unnamed temporary file, opened read-only (a file open for writing cannot be
    executed: ETXTBSY)."""
    why = "no directory"
    for d in TMPFILE_DIRS:
        try:
            w = _filled(os.open(d, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o700))
            try:
                return os.open(f"/proc/self/fd/{w}", os.O_RDONLY | os.O_CLOEXEC)
            finally:
                os.close(w)
        except OSError as e:
            why = f"{d}: {e.strerror}"
    raise SpiceError("restore", f"nowhere to put the restore stub (executable memfds are refused; {why})")


def _filled(fd: int) -> int:
    try:
        os.write(fd, elf())
    except BaseException:
        os.close(fd)
        raise
    return fd
