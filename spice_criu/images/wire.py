# SPDX-License-Identifier: MIT
"""Protobuf varints by hand, for the places that must not import protobuf (the RPC fast path, the
lite image codec, the schema generator) or write raw fields (crit's JSON -> bytes for strings that
are not UTF-8)."""

from __future__ import annotations


def encode_varint(n: int) -> bytes:
    """A negative n is written as its 64-bit two's complement (10 bytes), as protobuf does."""
    n &= 0xFFFFFFFFFFFFFFFF
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def decode_varint(buf: bytes, i: int) -> tuple[int, int]:
    """(value, next offset); ValueError when truncated or longer than 64 bits."""
    shift = value = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7


def length_delimited(number: int, body: bytes) -> bytes:
    """A wire-type-2 field (bytes, string, embedded message)."""
    return encode_varint(number << 3 | 2) + encode_varint(len(body)) + body


def fields(buf: bytes) -> list[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) of every field of a serialized message: an int for varints,
    the bytes for length-delimited and fixed-size fields; ValueError on anything malformed."""
    out: list[tuple[int, int, int | bytes]] = []
    i = 0
    while i < len(buf):
        key, i = decode_varint(buf, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, i = decode_varint(buf, i)
            out.append((num, wt, v))
            continue
        if wt == 2:
            n, i = decode_varint(buf, i)
        elif wt in (1, 5):
            n = 8 if wt == 1 else 4
        else:
            raise ValueError(f"wire type {wt}")
        if i + n > len(buf):
            raise ValueError("truncated field")
        out.append((num, wt, buf[i : i + n]))
        i += n
    return out
