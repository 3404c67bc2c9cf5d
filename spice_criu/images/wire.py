# SPDX-License-Identifier: MIT
"""Protobuf varints by hand, for the few places that must not import protobuf (the RPC fast path)
or write raw fields (crit's JSON -> bytes for strings that are not UTF-8)."""

from __future__ import annotations


def encode_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
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
