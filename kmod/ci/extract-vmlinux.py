#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Extract the uncompressed ELF vmlinux from a Debian bzImage (XZ: bookworm 6.1; ZSTD: trixie
6.12; GZIP). Usage: extract-vmlinux.py /boot/vmlinuz-VER OUT"""

import lzma
import subprocess
import sys
import zlib

with open(sys.argv[1], "rb") as f:
    data = f.read()


def try_xz(off):
    return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data[off:])


def try_gz(off):
    return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data[off:])


def try_zstd(off):
    try:
        import zstandard

        return zstandard.ZstdDecompressor().decompressobj().decompress(data[off:])
    except ImportError:  # zstd CLI; it complains about the bytes after the frame, output is fine
        return subprocess.run(["zstd", "-dcq"], input=data[off:], capture_output=True).stdout


for magic, fn in ((b"\xfd7zXZ\x00", try_xz), (b"\x28\xb5\x2f\xfd", try_zstd), (b"\x1f\x8b\x08", try_gz)):
    off = data.find(magic)
    while off != -1:
        try:
            out = fn(off)
            if out[:4] == b"\x7fELF":
                with open(sys.argv[2], "wb") as f:
                    f.write(out)
                print(f"extracted {len(out)} bytes from offset {off}")
                sys.exit(0)
        except Exception:
            pass
        off = data.find(magic, off + 1)
sys.exit("no ELF payload found")
