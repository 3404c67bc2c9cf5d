# SPDX-License-Identifier: MIT
"""Signal ABI structures for x86_64: siginfo_t, sigset masks, stack_t, and the rt_sigframe.

The rt_sigframe is what the kernel pushes on signal delivery and what rt_sigreturn(2) consumes; both
the restore backend (final sigreturn into the restored context) and inject.py (orphan fallback) build
one from saved registers and the xsave area.
"""

from __future__ import annotations

import ctypes
import struct

TYPE_CHECKING = False  # typing costs ~10 ms of start-up; annotations are strings
if TYPE_CHECKING:
    from collections.abc import Iterable

c_u8 = ctypes.c_uint8
c_u16 = ctypes.c_uint16
c_u32 = ctypes.c_uint32
c_u64 = ctypes.c_uint64
c_i32 = ctypes.c_int32

NSIG = 64
# x86_64 numbers, so that the restore path needs no `signal` module (it pulls in enum at start-up)
SIGINT, SIGKILL, SIGUSR1, SIGUSR2, SIGTERM, SIGCHLD = 2, 9, 10, 12, 15, 17
SIGTRAP, SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU = 5, 19, 20, 21, 22
STOP_SIGNALS = frozenset((SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU))

SI_USER = 0
SI_KERNEL = 0x80
SI_QUEUE = -1
SI_TIMER = -2
SI_TKILL = -6

SS_ONSTACK = 1
SS_DISABLE = 2

# uc_flags (arch/x86/include/uapi/asm/ucontext.h)
UC_FP_XSTATE = 0x1
UC_SIGCONTEXT_SS = 0x2
UC_STRICT_RESTORE_SS = 0x4

FP_XSTATE_MAGIC1 = 0x46505853
FP_XSTATE_MAGIC2 = 0x46505845
FX_SW_BYTES_OFFSET = 464  # fxsave.sw_reserved: struct _fpx_sw_bytes
FXSAVE_SIZE = 512


class Siginfo(ctypes.Structure):
    """siginfo_t (128 bytes); the union is exposed through properties at its x86_64 offsets."""

    _fields_ = [
        ("si_signo", c_i32),
        ("si_errno", c_i32),
        ("si_code", c_i32),
        ("_pad0", c_i32),
        ("_data", c_u8 * 112),
    ]

    def _get(self, fmt: str, off: int) -> int:
        return struct.unpack_from(fmt, bytes(self), off)[0]

    def _set(self, fmt: str, off: int, v: int) -> None:
        struct.pack_into(fmt, self._data, off - 16, v)

    # _kill / _rt / _sigchld: pid at 16, uid at 20; _rt.sigval and _sigchld.status at 24
    pid = property(lambda s: s._get("<i", 16), lambda s, v: s._set("<i", 16, v))
    uid = property(lambda s: s._get("<I", 20), lambda s, v: s._set("<I", 20, v))
    status = property(lambda s: s._get("<i", 24), lambda s, v: s._set("<i", 24, v))
    value = property(lambda s: s._get("<Q", 24), lambda s, v: s._set("<Q", 24, v))
    # _sigfault.addr at 16
    addr = property(lambda s: s._get("<Q", 16), lambda s, v: s._set("<Q", 16, v))
    # _timer: tid at 16, overrun at 20
    timer_id = property(lambda s: s._get("<i", 16))

    @classmethod
    def from_bytes(cls, data: bytes) -> Siginfo:
        return cls.from_buffer_copy(data.ljust(ctypes.sizeof(cls), b"\0"))

    def __repr__(self) -> str:
        return f"Siginfo(signo={self.si_signo}, errno={self.si_errno}, code={self.si_code})"


assert ctypes.sizeof(Siginfo) == 128


def sigmask(signals: Iterable[int]) -> int:
    """The kernel's 64-bit sigset_t for a set of signal numbers."""
    m = 0
    for s in signals:
        m |= 1 << (int(s) - 1)
    return m


def signals_in(mask: int) -> list[int]:
    return [i + 1 for i in range(NSIG) if mask >> i & 1]


class StackT(ctypes.Structure):
    _fields_ = [("ss_sp", c_u64), ("ss_flags", c_i32), ("_pad", c_i32), ("ss_size", c_u64)]


class Sigcontext(ctypes.Structure):
    """struct sigcontext (x86_64 uapi), 256 bytes."""

    _fields_ = [
        *[(n, c_u64) for n in ("r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "di", "si",
                                "bp", "bx", "dx", "ax", "cx", "sp", "ip", "flags")],
        ("cs", c_u16),
        ("gs", c_u16),
        ("fs", c_u16),
        ("ss", c_u16),
        ("err", c_u64),
        ("trapno", c_u64),
        ("oldmask", c_u64),
        ("cr2", c_u64),
        ("fpstate", c_u64),
        ("reserved1", c_u64 * 8),
    ]


class Ucontext(ctypes.Structure):
    _fields_ = [
        ("uc_flags", c_u64),
        ("uc_link", c_u64),
        ("uc_stack", StackT),
        ("uc_mcontext", Sigcontext),
        ("uc_sigmask", c_u64),
    ]


class RtSigframe(ctypes.Structure):
    """struct rt_sigframe (arch/x86/include/asm/sigframe.h); the fp state follows, 64-byte aligned."""

    _fields_ = [("pretcode", c_u64), ("uc", Ucontext), ("info", Siginfo)]


assert ctypes.sizeof(Sigcontext) == 256 and ctypes.sizeof(RtSigframe) == 440

_GP = ("r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "di", "si", "bp", "bx", "dx", "ax", "cx",
       "sp", "ip", "flags")


def sigframe_xstate(xstate: bytes) -> bytes:
    """An NT_X86_XSTATE regset turned into signal-frame fp state: ptrace puts XCR0 in the first
    sw_reserved word, a signal frame wants struct _fpx_sw_bytes there and MAGIC2 after the area."""
    xs = bytearray(xstate)
    if len(xs) <= 576:
        raise ValueError(f"xstate of {len(xs)} bytes has no xsave header")
    magic1 = struct.unpack_from("<I", xs, FX_SW_BYTES_OFFSET)[0]
    if magic1 == FP_XSTATE_MAGIC1:
        xfeatures = struct.unpack_from("<Q", xs, FX_SW_BYTES_OFFSET + 8)[0]
    else:
        xcr0 = struct.unpack_from("<Q", xs, FX_SW_BYTES_OFFSET)[0]
        xfeatures = xcr0 or struct.unpack_from("<Q", xs, 512)[0] | 3
    sw = struct.pack("<IIQI", FP_XSTATE_MAGIC1, len(xs) + 4, xfeatures, len(xs)).ljust(48, b"\0")
    xs[FX_SW_BYTES_OFFSET : FX_SW_BYTES_OFFSET + 48] = sw
    return bytes(xs) + struct.pack("<I", FP_XSTATE_MAGIC2)


def build_rt_sigframe(frame_addr: int, regs: object, xstate: bytes | None, blocked: int,
                      pretcode: int = 0, altstack: StackT | None = None) -> bytes:
    """Bytes of an rt_sigframe placed at `frame_addr` that rt_sigreturn turns into `regs`.

    rt_sigreturn reads the frame at (sp - 8), i.e. sp must point just past `pretcode` when it runs.
    `xstate` is the NT_X86_XSTATE regset (ptrace.get_fpstate), placed at the first 64-byte boundary
    after the frame with FP_XSTATE_MAGIC2 appended, as the kernel expects; on CPUs without XSAVE it
    is the 512-byte fxsave image (NT_PRFPREG), used as is.
    With xstate=None the kernel resets the FPU to its initial state on sigreturn.
    `altstack`=None leaves the task's sigaltstack unchanged (a deliberately invalid stack_t: the
    kernel ignores errors restoring it).
    """
    f = RtSigframe()
    f.pretcode = pretcode
    uc = f.uc
    uc.uc_flags = UC_SIGCONTEXT_SS | UC_STRICT_RESTORE_SS
    if altstack is not None:
        uc.uc_stack = altstack
    mc = uc.uc_mcontext
    for n in _GP:
        setattr(mc, n, getattr(regs, n))
    mc.cs = regs.cs
    mc.ss = regs.ss
    uc.uc_sigmask = blocked
    out = bytearray(bytes(f))
    if xstate is not None:
        fp = (frame_addr + len(out) + 63) & ~63
        out += b"\0" * (fp - frame_addr - len(out))
        if len(xstate) == FXSAVE_SIZE:  # a CPU without XSAVE: the bare fxsave image
            out += xstate
        else:
            uc_flags_off = RtSigframe.uc.offset + Ucontext.uc_flags.offset
            struct.pack_into("<Q", out, uc_flags_off, uc.uc_flags | UC_FP_XSTATE)
            out += sigframe_xstate(xstate)
        fpstate_off = RtSigframe.uc.offset + Ucontext.uc_mcontext.offset + Sigcontext.fpstate.offset
        struct.pack_into("<Q", out, fpstate_off, fp)
    return bytes(out)
