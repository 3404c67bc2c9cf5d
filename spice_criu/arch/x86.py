# SPDX-License-Identifier: MIT
"""x86_64 register state: CRIU image messages <-> the kernel's ptrace layouts.

General registers: `user_regs_struct`, field for field the order of CRIU's user_x86_regs_entry.
FPU: the kernel's NT_X86_XSTATE buffer (legacy fxsave area, xsave header, components at the
offsets CPUID leaf 0xD gives) <-> user_x86_fpregs_entry + user_x86_xsave_entry.
"""

from __future__ import annotations

import ctypes
import struct

from .. import once

GP_FIELDS = [
    "r15",
    "r14",
    "r13",
    "r12",
    "bp",
    "bx",
    "r11",
    "r10",
    "r9",
    "r8",
    "ax",
    "cx",
    "dx",
    "si",
    "di",
    "orig_ax",
    "ip",
    "cs",
    "flags",
    "sp",
    "ss",
    "fs_base",
    "gs_base",
    "ds",
    "es",
    "fs",
    "gs",
]
USER_REGS_SIZE = 8 * len(GP_FIELDS)
_U64 = (1 << 64) - 1

XFEATURE_FP, XFEATURE_SSE = 1 << 0, 1 << 1
# CRIU's xsave fields: (component number, message field, element size in bytes)
XSAVE_COMPONENTS = (
    (2, "ymmh_space", 4),
    (3, "bndreg_state", 8),
    (4, "bndcsr_state", 8),
    (5, "opmask_reg", 8),
    (6, "zmm_upper", 8),
    (7, "hi16_zmm", 8),
    (9, "pkru", 4),
)
_ELEM = {4: "I", 8: "Q"}
FX_SW_OFFSET = 464  # ptrace puts XCR0 (the enabled xfeatures) here, in the fxsave's sw_reserved bytes
XSAVE_HDR = 512


def regs_from_image(gpregs) -> list[int]:
    """The 27 words of user_regs_struct from a user_x86_regs_entry."""
    return [getattr(gpregs, f) & _U64 for f in GP_FIELDS]


def regs_to_image(words: list[int], msg) -> None:
    for f, v in zip(GP_FIELDS, words, strict=True):
        setattr(msg, f, v & _U64)
    msg.mode = 1  # NATIVE


# ---------------------------------------------------------------- CPUID (xsave component offsets)

_CPUID_CODE = bytes.fromhex(
    "53"  # push rbx
    "4989d0"  # mov r8, rdx (cpuid clobbers rdx)
    "89f8"  # mov eax, edi
    "89f1"  # mov ecx, esi
    "0fa2"  # cpuid
    "418900"  # mov [r8], eax
    "41895804"  # mov [r8+4], ebx
    "41894808"  # mov [r8+8], ecx
    "4189500c"  # mov [r8+12], edx
    "5b"  # pop rbx
    "c3"  # ret
)


@once
def _cpuid_fn():
    from ..linux.mman import machine_code

    return machine_code(_CPUID_CODE, None, ctypes.c_uint32, ctypes.c_uint32, ctypes.POINTER(ctypes.c_uint32))


def cpuid(leaf: int, subleaf: int = 0) -> tuple[int, int, int, int]:
    fn = _cpuid_fn()
    out = (ctypes.c_uint32 * 4)()
    fn(leaf, subleaf, out)
    return out[0], out[1], out[2], out[3]


@once
def xsave_offsets() -> dict[int, tuple[int, int]]:
    """component -> (offset, size) in the standard (non-compacted) xsave format."""
    out = {}
    supported = cpuid(0xD, 0)[0] | (cpuid(0xD, 0)[3] << 32)
    for comp, _, _ in XSAVE_COMPONENTS:
        if supported & (1 << comp):
            size, off, _, _ = cpuid(0xD, comp)
            out[comp] = (off, size)
    return out


# ---------------------------------------------------------------- FPU image <-> NT_X86_XSTATE


def xsave_from_image(fpregs, template: bytes) -> bytes:
    """Build an NT_X86_XSTATE buffer for PTRACE_SETREGSET from a user_x86_fpregs_entry.

    `template` is the task's current buffer (from PTRACE_GETREGSET): it gives the size and the
    kernel's software bytes, which are kept.
    """
    buf = bytearray(len(template))
    buf[FX_SW_OFFSET:XSAVE_HDR] = template[FX_SW_OFFSET:XSAVE_HDR]
    if len(fpregs.st_space) != 32 or len(fpregs.xmm_space) != 64:
        raise ValueError("fpregs must hold 32 st_space and 64 xmm_space words")
    struct.pack_into(
        "<HHHHQQII",
        buf,
        0,
        fpregs.cwd & 0xFFFF,
        fpregs.swd & 0xFFFF,
        fpregs.twd & 0xFFFF,
        fpregs.fop & 0xFFFF,
        fpregs.rip,
        fpregs.rdp,
        fpregs.mxcsr,
        fpregs.mxcsr_mask,
    )
    struct.pack_into("<32I", buf, 32, *fpregs.st_space)
    struct.pack_into("<64I", buf, 160, *fpregs.xmm_space)
    if len(buf) <= XSAVE_HDR:
        return bytes(buf)
    (xfeatures,) = struct.unpack_from("<Q", template, FX_SW_OFFSET)
    bv = XFEATURE_FP | XFEATURE_SSE
    if fpregs.HasField("xsave"):
        x = fpregs.xsave
        bv = x.xstate_bv
        offsets = xsave_offsets()
        for comp, name, esize in XSAVE_COMPONENTS:
            vals = list(getattr(x, name))
            if not vals or not bv & (1 << comp):
                continue
            if comp not in offsets or not xfeatures & (1 << comp):
                raise ValueError(f"image uses xsave component {comp} ({name}) this CPU/kernel lacks")
            off, size = offsets[comp]
            raw = struct.pack(f"<{len(vals)}{_ELEM[esize]}", *vals)[:size]
            if off + len(raw) > len(buf):
                raise ValueError(f"xsave component {comp} does not fit the kernel's buffer")
            buf[off : off + len(raw)] = raw
    struct.pack_into("<QQ", buf, XSAVE_HDR, bv & xfeatures, 0)
    return bytes(buf)


def xsave_to_image(buf: bytes, fpregs) -> None:
    """Fill a user_x86_fpregs_entry from an NT_X86_XSTATE buffer (the dump side)."""
    cwd, swd, twd, fop, rip, rdp, mxcsr, mxcsr_mask = struct.unpack_from("<HHHHQQII", buf, 0)
    fpregs.cwd, fpregs.swd, fpregs.twd, fpregs.fop = cwd, swd, twd, fop
    fpregs.rip, fpregs.rdp, fpregs.mxcsr, fpregs.mxcsr_mask = rip, rdp, mxcsr, mxcsr_mask
    fpregs.st_space[:] = struct.unpack_from("<32I", buf, 32)
    fpregs.xmm_space[:] = struct.unpack_from("<64I", buf, 160)
    if len(buf) <= XSAVE_HDR:
        return
    (bv,) = struct.unpack_from("<Q", buf, XSAVE_HDR)
    (xfeatures,) = struct.unpack_from("<Q", buf, FX_SW_OFFSET)
    x = fpregs.xsave
    x.xstate_bv = bv
    offsets = xsave_offsets()
    for comp, name, esize in XSAVE_COMPONENTS:
        if comp not in offsets or not xfeatures & (1 << comp):
            continue
        off, size = offsets[comp]
        n = size // esize
        getattr(x, name)[:] = struct.unpack_from(f"<{n}{_ELEM[esize]}", buf, off)
