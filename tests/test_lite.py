# SPDX-License-Identifier: MIT
"""spice_criu.images.lite decodes exactly like protobuf (upb), for every CRIU message, valid or not.

Random messages of every type (full value ranges: negative ints, non-ASCII strings, deep nesting)
are serialized by protobuf and decoded by both; then mutated (bit flips, cuts, splices, random
bytes, hand-made wire edge cases) and decoded again: lite fails (DecodeError) exactly when protobuf
does, and otherwise gives the same values, presence, defaults and missing-required-field paths.
"""

from __future__ import annotations

import importlib
import pkgutil
import random
import struct
import sys
from pathlib import Path

import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import FieldDescriptor as FD
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import spice_criu.images.pb as pbpkg
from spice_criu.images import codec, lite
from spice_criu.images.pb import schema
from spice_criu.images.pb._pool import POOL

REPO = Path(__file__).resolve().parent.parent

for _m in pkgutil.iter_modules(pbpkg.__path__):
    if _m.name.endswith("_pb2"):
        importlib.import_module(f"spice_criu.images.pb.{_m.name}")

NAMES = sorted(schema.MESSAGES)


def pb_class(name: str):
    return message_factory.GetMessageClass(POOL.FindMessageTypeByName(name))


# ---------------------------------------------------------------- the generated table


def _gen_module():
    sys.path.insert(0, str(REPO / "images"))
    try:
        return importlib.import_module("gen")
    finally:
        sys.path.remove(str(REPO / "images"))


def test_schema_table_is_in_sync_with_the_compiled_descriptors() -> None:
    committed = (REPO / "spice_criu/images/pb/schema.py").read_text()
    assert _gen_module().schema_source() == committed, "run `make protos`"


def test_schema_table_describes_every_message_and_enum() -> None:
    seen_enums = set()
    for name in NAMES:
        desc = POOL.FindMessageTypeByName(name)
        rows = schema.MESSAGES[name]
        assert [r[0] for r in rows] == [f.number for f in desc.fields]
        for (number, fname, _t, label, packed, default, sub), f in zip(rows, desc.fields, strict=True):
            assert (number, fname, packed) == (f.number, f.name, f.is_packed)
            assert label == ("repeated" if f.is_repeated else "required" if f.is_required else "optional")
            if f.enum_type:
                seen_enums.add(f.enum_type.full_name)
                assert sub == f.enum_type.full_name
                assert lite.enum_names(sub) == {n: v.name for n, v in f.enum_type.values_by_number.items()}
            if not f.is_repeated and not f.message_type:
                assert default == f.default_value and type(default) is type(f.default_value)
    assert seen_enums <= set(schema.ENUMS)
    assert len(NAMES) > 150


# ---------------------------------------------------------------- random messages

_INT_RANGES = {
    FD.TYPE_INT32: (-(2**31), 2**31 - 1), FD.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FD.TYPE_SFIXED32: (-(2**31), 2**31 - 1), FD.TYPE_INT64: (-(2**63), 2**63 - 1),
    FD.TYPE_SINT64: (-(2**63), 2**63 - 1), FD.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FD.TYPE_UINT32: (0, 2**32 - 1), FD.TYPE_FIXED32: (0, 2**32 - 1),
    FD.TYPE_UINT64: (0, 2**64 - 1), FD.TYPE_FIXED64: (0, 2**64 - 1),
}


def _int(rng: random.Random, lo: int, hi: int) -> int:
    r = rng.random()
    if r < 0.3:
        return rng.choice([lo, hi, 0, 1, -1 if lo < 0 else 2, 127, 128, 300])
    if r < 0.6:
        return rng.randint(max(lo, -1000), min(hi, 1000))
    return rng.randint(lo, hi)


def _value(f, rng: random.Random):
    t = f.type
    if t in _INT_RANGES:
        return _int(rng, *_INT_RANGES[t])
    if t == FD.TYPE_BOOL:
        return rng.random() < 0.5
    if t == FD.TYPE_ENUM:
        return rng.choice(f.enum_type.values).number
    if t in (FD.TYPE_FLOAT, FD.TYPE_DOUBLE):
        return rng.choice([0.0, 1.5, -2.25])
    if t == FD.TYPE_STRING:
        return "".join(rng.choice("ab/. é✓\0\U0001f600") for _ in range(rng.randint(0, 12)))
    if t == FD.TYPE_BYTES:
        return rng.randbytes(rng.randint(0, 20))
    raise AssertionError(t)


def random_message(cls, rng: random.Random, depth: int = 0, p: float = 0.5):
    msg = cls()
    for f in cls.DESCRIPTOR.fields:
        if not f.is_required and rng.random() > p:
            continue
        if f.is_required and rng.random() < 0.03:
            continue  # sometimes leave a required field out
        if f.type == FD.TYPE_MESSAGE:
            if depth > 4:
                continue
            sub = f.message_type._concrete_class
            if f.is_repeated:
                for _ in range(rng.randint(0, 3)):
                    getattr(msg, f.name).add().CopyFrom(random_message(sub, rng, depth + 1, p))
            else:
                getattr(msg, f.name).CopyFrom(random_message(sub, rng, depth + 1, p))
                getattr(msg, f.name).SetInParent()
        elif f.is_repeated:
            getattr(msg, f.name).extend(_value(f, rng) for _ in range(rng.randint(0, 4)))
        else:
            setattr(msg, f.name, _value(f, rng))
    return msg


# ---------------------------------------------------------------- comparing


def assert_same(pbm, lm, path: str = "") -> None:
    """Every field of protobuf's message equals lite's: values, types, presence, defaults."""
    desc = pbm.DESCRIPTOR
    assert type(lm).__name__ == desc.full_name, path
    for f in desc.fields:
        where = f"{path}{f.name}"
        a, b = getattr(pbm, f.name), getattr(lm, f.name)
        if f.is_repeated:
            assert isinstance(b, list), where
            assert len(a) == len(b), where
            if f.type == FD.TYPE_MESSAGE:
                for i, (x, y) in enumerate(zip(a, b, strict=True)):
                    assert_same(x, y, f"{where}[{i}].")
            else:
                assert [(type(x), x) for x in a] == [(type(y), y) for y in b], where
            continue
        assert pbm.HasField(f.name) == lm.HasField(f.name), where
        if f.type == FD.TYPE_MESSAGE:
            assert_same(a, b, f"{where}.")
        else:
            assert type(a) is type(b) and a == b, f"{where}: protobuf {a!r} != lite {b!r}"
    assert pbm.IsInitialized() == lm.IsInitialized(), path
    if not path:
        assert pbm.FindInitializationErrors() == lm.FindInitializationErrors()


def check_bytes(name: str, data: bytes) -> bool:
    """Decode with both; they must agree. Returns whether protobuf accepted the bytes."""
    pbm = pb_class(name)()
    try:
        pbm.ParseFromString(data)
    except DecodeError:
        with pytest.raises(lite.DecodeError):
            lite.decode(name, data)
        return False
    try:
        lm = lite.decode(name, data)
    except lite.DecodeError as e:
        raise AssertionError(f"lite rejects what protobuf accepts: {e}; {data!r}") from None
    assert_same(pbm, lm)
    return True


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize("name", NAMES)
def test_random_messages_decode_like_protobuf(name: str) -> None:
    rng = random.Random(name)
    cls = pb_class(name)
    for i in range(30):
        m = random_message(cls, rng, p=0.3 if i % 2 else 0.8)
        data = m.SerializePartialToString()
        assert check_bytes(name, data)
        if m.IsInitialized():
            assert lite.decode(name, data).SerializeToString() == m.SerializeToString()
    empty = lite.decode(name, b"")
    assert_same(cls(), empty)


def _mutate(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    op = rng.randrange(6)
    if op == 0 and b:
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
    elif op == 1 and b:
        del b[rng.randrange(len(b)) :]
    elif op == 2:
        i = rng.randint(0, len(b))
        b[i:i] = rng.randbytes(rng.randint(1, 6))
    elif op == 3 and b:
        i = rng.randrange(len(b))
        del b[i : i + rng.randint(1, 4)]
    elif op == 4 and b:
        b[rng.randrange(len(b))] = rng.choice([0x00, 0x80, 0xFF, 0x0B, 0x0C, 0x0E, 0x0F, 0x7F])
    else:
        b += rng.choice([b"\x0b", b"\x0c", b"\x0e\x00", b"\x00", b"\xff" * 11, b"\x1a\x80", b"\x80"])
    return bytes(b)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(NAMES), seed=st.integers(0, 2**32), rounds=st.integers(1, 4))
def test_mutated_messages_fail_or_decode_like_protobuf(name: str, seed: int, rounds: int) -> None:
    rng = random.Random(seed)
    data = random_message(pb_class(name), rng).SerializePartialToString()
    for _ in range(rounds):
        data = _mutate(data, rng)
    check_bytes(name, data)


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(NAMES), data=st.binary(max_size=64))
def test_random_bytes_fail_or_decode_like_protobuf(name: str, data: bytes) -> None:
    check_bytes(name, data)


def _key(number: int, wire: int) -> bytes:
    return lite._varint(number << 3 | wire)


def _groups(n: int) -> bytes:
    return b"\x0b" * n + b"\x0c" * n


WIRE_CASES = {  # (message, bytes): the corners of upb's decoder
    "varint 10 bytes, high bits dropped": ("pagemap_entry", b"\x08" + b"\xff" * 9 + b"\x7f"),
    "varint 11 bytes": ("pagemap_entry", b"\x08" + b"\xff" * 10 + b"\x01"),
    "uint32 from 64 bits": ("pagemap_entry", b"\x10" + b"\xff" * 9 + b"\x01"),
    "bool 2": ("pagemap_entry", b"\x18\x02"),
    "wire type mismatch (len for varint)": ("pagemap_entry", b"\x0a\x01\x00"),
    "wire type mismatch (fixed32)": ("pagemap_entry", b"\x0d\x01\x00\x00\x00"),
    "group skipped": ("pagemap_entry", b"\x0b\x08\x01\x0c\x08\x05"),
    "group mismatched end": ("pagemap_entry", b"\x0b\x14"),
    "group unclosed": ("pagemap_entry", b"\x0b\x08\x01"),
    "lone end group": ("pagemap_entry", b"\x0c"),
    "groups 100 deep": ("pagemap_entry", _groups(100)),
    "groups 101 deep": ("pagemap_entry", _groups(101)),
    "sub + groups 99": ("reg_file_entry", b"\x2a\xc6\x01" + _groups(99)),
    "sub + groups 100": ("reg_file_entry", b"\x2a\xc8\x01" + _groups(100)),
    "wire type 6": ("pagemap_entry", b"\x0e"),
    "wire type 7": ("pagemap_entry", b"\x0f\x00"),
    "field 0": ("pagemap_entry", b"\x00\x01"),
    "length past end": ("reg_file_entry", b"\x32\x05ab"),
    "truncated fixed": ("sk_opts_entry", b"\x81\x01\x01\x02"),
    "key 5 bytes, 33 bits": ("pagemap_entry", b"\x80\x80\x80\x80\x10\x00"),
    "key 6 bytes": ("pagemap_entry", b"\x88\x80\x80\x80\x80\x00\x01"),
    "key 5 bytes": ("reg_file_entry", b"\xb2\x80\x80\x80\x00\x01a"),
    "max field number": ("pagemap_entry", b"\xf8\xff\xff\xff\x0f\x01"),
    "length 5 bytes": ("reg_file_entry", b"\x32\x81\x80\x80\x80\x00a"),
    "length 6 bytes": ("reg_file_entry", b"\x32\x81\x80\x80\x80\x80\x00a"),
    "packed into a singular field": ("pagemap_entry", b"\x22\x02\x01\x02"),
    "packed repeated": ("reg_file_entry", b"\x5a\x03\x01\x02\x03\x58\x07"),
    "packed truncated": ("reg_file_entry", b"\x5a\x02\x01\x82"),
    "packed fixed64, 9 bytes": ("sk_opts_entry", b"\x82\x01\x09" + b"\x01" * 9),
    "packed fixed64": ("sk_opts_entry", b"\x82\x01\x08" + b"\x01" * 8 + b"\x81\x01" + b"\x02" * 8),
    "repeated wire mismatch": ("reg_file_entry", b"\x5d\x01\x00\x00\x00"),
    "unknown enum value": ("file_entry", b"\x08\x63\x10\x01"),
    "negative enum value": ("file_entry", b"\x08" + b"\xff" * 9 + b"\x01"),
    "enum from 33 bits": ("file_entry", b"\x08\x81\x80\x80\x80\x10"),
    "int32 from 33 bits": ("autofs_entry", b"\x08\x81\x80\x80\x80\x10"),
    "int32 min": ("autofs_entry", b"\x08\x80\x80\x80\x80\x08"),
    "sint32 from 33 bits": ("reg_file_entry", b"\x38\x81\x80\x80\x80\x10"),
    "submessages merge": ("reg_file_entry", b"\x2a\x02\x08\x01\x2a\x02\x10\x02\x2a\x02\x08\x03"),
    "empty submessage": ("reg_file_entry", b"\x2a\x00"),
    "submessage as varint": ("reg_file_entry", b"\x28\x01"),
    "bad submessage": ("reg_file_entry", b"\x2a\x01\x80"),
    "last string wins": ("reg_file_entry", b"\x32\x01a\x32\x01b"),
    "string not UTF-8": ("reg_file_entry", b"\x32\x02\xff\xfe"),
    "string with a surrogate": ("reg_file_entry", b"\x32\x03\xed\xa0\x80"),
    "missing nested required": ("file_entry", b"\x08\x01\x10\x05\x1a\x00"),
    "repeated submessage errors": ("core_entry", b"\x08\x01\x12\x00"),
    "end group inside a submessage": ("reg_file_entry", b"\x2a\x01\x0c"),
}


@pytest.mark.parametrize("case", sorted(WIRE_CASES))
def test_wire_corner_cases(case: str) -> None:
    name, data = WIRE_CASES[case]
    check_bytes(name, data)


def test_string_not_utf8_is_bytes_as_in_protobuf() -> None:
    m = lite.decode("reg_file_entry", b"\x32\x02\xff\xfe")
    assert m.name == b"\xff\xfe" and m.HasField("name")


def test_defaults_and_presence() -> None:
    m = lite.decode("reg_file_entry", b"")
    assert (m.mnt_id, m.size, m.name, m.build_id) == (-1, 0, "", [])
    assert not m.HasField("fown") and m.fown.uid == 0 and not m.HasField("fown")
    assert m.FindInitializationErrors() == ["id", "flags", "pos", "fown", "name"]
    with pytest.raises(ValueError):
        m.HasField("build_id")
    with pytest.raises(ValueError):
        m.HasField("nope")
    with pytest.raises(AttributeError):
        _ = m.nope
    x = lite.decode("user_x86_regs_entry", b"")
    assert x.mode == 1 and not x.HasField("mode")
    assert lite.decode("user_desc_t", b"").read_exec_only is True


def test_decode_errors_are_decode_errors_only() -> None:
    for data in (b"\x08", b"\x0a\x05", b"\xff" * 12, b"\x0f", b"\x2a\x03\x08"):
        with pytest.raises(lite.DecodeError):
            lite.decode("reg_file_entry", data)


def test_encoder_gives_protobufs_bytes() -> None:
    rng = random.Random(7)
    for name in NAMES:
        cls = pb_class(name)
        for _ in range(10):
            m = random_message(cls, rng, p=0.7)
            if not m.IsInitialized():
                with pytest.raises(lite.EncodeError):
                    lite.decode(name, m.SerializePartialToString()).SerializeToString()
                continue
            assert lite.decode(name, m.SerializeToString()).SerializeToString() == m.SerializeToString(), name


def test_stats_built_with_lite_equal_protobufs() -> None:
    kw = {"pages_compared": 0, "pages_skipped_cow": 0, "forking_time": 123, "restore_time": 2**32 - 1,
          "pages_restored": 77}
    ours = lite.message_class("stats_entry")(restore=lite.message_class("restore_stats_entry")(**kw))
    theirs = codec.entry_class("STATS")()
    for k, v in kw.items():
        setattr(theirs.restore, k, v)
    assert ours.SerializeToString() == theirs.SerializeToString()
    with pytest.raises(ValueError):
        lite.message_class("restore_stats_entry")(restore_time=2**32)
    with pytest.raises(ValueError):
        lite.message_class("file_entry")(type=99)


def test_packed_encoding_is_accepted() -> None:
    vals = [0, 1, 2**32 - 1, 300]
    body = b"".join(lite._varint(v) for v in vals)
    m = lite.decode("reg_file_entry", _key(11, 2) + lite._varint(len(body)) + body + _key(11, 0) + b"\x05")
    assert m.build_id == [*vals, 5]
    fixed = struct.pack("<3Q", 1, 2**64 - 1, 5)
    s = lite.decode("sk_opts_entry", _key(16, 2) + lite._varint(len(fixed)) + fixed)
    assert s.so_filter == [1, 2**64 - 1, 5]


def test_imagedir_lite_reports_like_protobuf(tmp_path) -> None:
    from spice_criu.errors import ImageError
    from spice_criu.images import magic
    from spice_criu.images.imagedir import ImageDir

    head = struct.pack("<II", magic.head_magic("PSTREE"), magic.MAGICS["PSTREE"])
    partial = pb_class("pstree_entry")(pid=1, ppid=0).SerializePartialToString()
    cases = {
        "missing": head + struct.pack("<I", len(partial)) + partial,
        "corrupt": head + struct.pack("<I", 3) + b"\x08\x80\x80",
        "oversized": head + struct.pack("<I", 99) + b"\x08\x01",
    }
    seen = {}
    for what, data in cases.items():
        (tmp_path / "pstree.img").write_bytes(data)
        errors = []
        for lite_mode in (False, True):
            with pytest.raises(ImageError) as e:
                ImageDir(tmp_path, lite=lite_mode).entries("pstree.img")
            errors.append(str(e.value))
        seen[what] = errors[1]
        if what == "corrupt":  # same file, offset and message; the detail is lite's own
            assert errors[0].split(" message: ")[0] == errors[1].split(" message: ")[0], errors
        else:
            assert errors[0] == errors[1], errors
    assert seen["missing"].endswith("pstree.img: entry 0 lacks required fields: pgid, sid")
    assert "pstree.img at offset 8: bad pstree_entry message: " in seen["corrupt"]
    assert "pstree.img at offset 8: entry size 99 exceeds" in seen["oversized"]
