# SPDX-License-Identifier: MIT
"""CRIU's protobuf messages without protobuf: a proto2 wire decoder (and encoder) driven by pb/schema.py.

`spice restore` is timed against CRIU, whose schemas are compiled in; importing google.protobuf and
building the generated classes cost more than the rest of the restore's start-up. The restore path
therefore decodes images into these light messages, which behave like protobuf's (upb) messages for
everything it does with them:

- attribute access with proto2 defaults: an unset scalar reads as its default, an unset submessage
  as an empty instance, a repeated field is a list (bytes as bytes, strings as str, enums as ints);
- HasField(name) is true only for fields present on the wire (or assigned); IsInitialized() and
  FindInitializationErrors() report missing required fields with protobuf's paths ("fown.uid");
- decoding follows upb exactly: last value wins for singular fields, repeated occurrences of a
  submessage merge, packed and unpacked repeated scalars are both accepted, a field whose wire type
  does not match its schema is an unknown field, as is an enum value the schema does not name;
  unknown fields (groups included) are skipped; varints wrap like upb's (int32 truncation, 10-byte
  limit); a string that is not UTF-8 reads as bytes, as upb gives it; nesting deeper than 100 fails.

Malformed input raises DecodeError (a ValueError) with the byte position; codec turns that into the
usual ImageError naming the file.

Messages are also built like protobuf's (keyword construction, checked scalar assignment, a child
becoming present in its parent when modified, repeated append/extend/add(), CopyFrom, MergeFrom,
SetInParent, Clear, ClearField) and SerializeToString() gives protobuf's canonical bytes: stats and
pagemaps are written this way, and so can the dump path be. Unknown fields of decoded messages are
not kept, so re-encoding a decoded message drops them (protobuf would keep them).
"""

from __future__ import annotations

import struct

from .pb.schema import ENUMS, MESSAGES
from .wire import encode_varint as _varint

_ONE_BYTE = [bytes((i,)) for i in range(128)]  # most register-array words (xsave) are small: no call

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

MAX_DEPTH = 100  # upb's default recursion limit (submessages and groups)
_MASK64 = (1 << 64) - 1
_MASK32 = (1 << 32) - 1


class DecodeError(ValueError):
    """Malformed protobuf wire data."""


class EncodeError(ValueError):
    """A message that cannot be serialized (a required field is missing)."""


# value kinds (how a field's value is read); wire type 0: varints
_U64, _U32, _I64, _I32, _S64, _S32, _BOOL, _ENUM = range(8)
_F32, _F64, _STR, _BYTES, _MSG = range(8, 13)
_KINDS = {
    "uint64": (_U64, 0), "uint32": (_U32, 0), "int64": (_I64, 0), "int32": (_I32, 0), "sint64": (_S64, 0),
    "sint32": (_S32, 0), "bool": (_BOOL, 0), "enum": (_ENUM, 0),
    "fixed32": (_F32, 5), "sfixed32": (_F32, 5), "float": (_F32, 5),
    "fixed64": (_F64, 1), "sfixed64": (_F64, 1), "double": (_F64, 1),
    "string": (_STR, 2), "bytes": (_BYTES, 2), "message": (_MSG, 2),
}
_RANGES = {"uint64": (0, _MASK64), "uint32": (0, _MASK32), "fixed64": (0, _MASK64), "fixed32": (0, _MASK32),
           "int64": (-(1 << 63), (1 << 63) - 1), "sint64": (-(1 << 63), (1 << 63) - 1),
           "sfixed64": (-(1 << 63), (1 << 63) - 1), "int32": (-(1 << 31), (1 << 31) - 1),
           "sint32": (-(1 << 31), (1 << 31) - 1), "sfixed32": (-(1 << 31), (1 << 31) - 1),
           "enum": (-(1 << 31), (1 << 31) - 1)}
_FIXED_FORMAT = {"fixed32": "I", "sfixed32": "i", "float": "f", "fixed64": "Q", "sfixed64": "q", "double": "d"}


class _Field:
    """One field of a message class, resolved for decoding."""

    __slots__ = ("number", "name", "type", "kind", "wire", "repeated", "required", "packed", "packable",
                 "default", "bit", "type_name", "fmt", "enum_values", "set", "sub", "key", "range")

    def __init__(self, row: tuple, index: int, cls: type) -> None:
        self.number, self.name, self.type, label, self.packed, self.default, self.type_name = row
        self.kind, self.wire = _KINDS[self.type]
        self.repeated = label == "repeated"
        self.required = label == "required"
        self.packable = self.repeated and self.wire != 2
        self.bit = 0 if self.repeated else 1 << index
        self.fmt = _FIXED_FORMAT.get(self.type)
        self.enum_values = frozenset(n for _, n in ENUMS[self.type_name]) if self.kind == _ENUM else None
        self.set = cls.__dict__[self.name].__set__  # the slot's setter: no presence bookkeeping
        self.sub: type[Message] | None = None  # the message class of a message field, once resolved
        # encoding: the field's key, and the accepted range of an integer field (None: not one)
        self.key = _varint(self.number << 3 | (2 if self.packed else self.wire))
        self.range = _RANGES.get(self.type)


class Message:
    """Base of the generated light message classes (one per CRIU message, made on first use).

    Built like protobuf's: keyword construction, assignment of scalars (type- and range-checked, the
    same errors), `sub.field = v` making `sub` present in its parent, repeated fields with append /
    extend / add(), CopyFrom / MergeFrom / SetInParent / Clear / ClearField.
    """

    __slots__ = ("_p", "_o")  # presence bits of the singular fields (by declaration index); owner link
    _name: str = ""
    _fields: tuple[_Field, ...] = ()
    _ordered: tuple[_Field, ...] = ()  # _fields by field number
    _by_number: dict[int, _Field] = {}
    _by_tag: dict[int, _Field] = {}  # wire tag (number << 3 | wire type) -> field, packed tags included
    _by_name: dict[str, _Field] = {}
    _required_mask = 0
    _subs: tuple[_Field, ...] = ()  # message-typed fields (for required-field checks)

    def __init__(self, **fields: Any) -> None:
        object.__setattr__(self, "_p", 0)
        object.__setattr__(self, "_o", None)
        for name, value in fields.items():
            f = self._by_name.get(name)
            if f is None:
                raise ValueError(f'Protocol message {self._name} has no "{name}" field.')
            if value is None:
                continue
            if f.repeated:
                getattr(self, name).extend(value)
            elif f.kind == _MSG:
                getattr(self, name).CopyFrom(_as_message(f, value))
            else:
                setattr(self, name, value)

    def __getattr__(self, name: str) -> Any:
        # only reached for slots never set: the proto2 default
        f = type(self)._by_name.get(name)
        if f is None:
            raise AttributeError(f'Protocol message {type(self)._name} has no "{name}" field.')
        if f.repeated:
            lst = Repeated(self, f)
            f.set(self, lst)
            return lst
        if f.kind == _MSG:  # an empty child, present in its parent once something is set in it
            child = (f.sub or _resolve(f))()
            object.__setattr__(child, "_o", (self, f.bit))
            f.set(self, child)
            return child
        return f.default

    def __setattr__(self, name: str, value: Any) -> None:
        f = self._by_name.get(name)
        if f is None:
            raise AttributeError(f'Protocol message {self._name} has no "{name}" field.')
        if f.repeated or f.kind == _MSG:
            raise AttributeError(f'Assignment not allowed to message or repeated field "{name}" in protocol '
                                 "message object.")
        f.set(self, _coerce(self, f, value))
        object.__setattr__(self, "_p", self._p | f.bit)
        _touch(self)

    def HasField(self, name: str) -> bool:  # noqa: N802 - protobuf's name
        f = self._by_name.get(name)
        if f is None or f.repeated:
            raise ValueError(f'Protocol message {self._name} has no singular "{name}" field.')
        return bool(self._p & f.bit)

    def SetInParent(self) -> None:  # noqa: N802
        """Make this (empty) submessage present in its parent."""
        _touch(self)

    def ClearField(self, name: str) -> None:  # noqa: N802
        f = self._by_name.get(name)
        if f is None:
            raise ValueError(f'Protocol message {self._name} has no "{name}" field.')
        self._drop(f)
        _touch(self)  # like any change: a child being cleared becomes present in its parent

    def Clear(self) -> None:  # noqa: N802
        for f in self._fields:
            self._drop(f)
        _touch(self)

    def _drop(self, f: _Field) -> None:
        slot = type(self).__dict__[f.name]
        try:
            old = slot.__get__(self)
        except AttributeError:
            return
        if isinstance(old, Message):
            object.__setattr__(old, "_o", None)  # a child held elsewhere no longer belongs here
        slot.__delete__(self)
        object.__setattr__(self, "_p", self._p & ~f.bit)

    def MergeFrom(self, other: Message) -> None:  # noqa: N802
        if type(other) is not type(self):
            raise TypeError(f"Parameter to MergeFrom() must be instance of same class: expected {self._name} "
                            f"got {type(other).__name__}.")
        p = other._p
        for f in self._fields:
            if f.repeated:
                values = getattr(other, f.name)
                if values:
                    getattr(self, f.name).extend(values)
            elif p & f.bit:
                if f.kind == _MSG:
                    getattr(self, f.name).MergeFrom(getattr(other, f.name))
                else:
                    f.set(self, getattr(other, f.name))
                    object.__setattr__(self, "_p", self._p | f.bit)
        _touch(self)

    def CopyFrom(self, other: Message) -> None:  # noqa: N802
        if other is self:
            return
        self.Clear()
        self.MergeFrom(other)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        if self._p != other._p:
            return False
        for f in self._fields:
            if (f.repeated or self._p & f.bit) and getattr(self, f.name) != getattr(other, f.name):
                return False
        return True

    __hash__ = None  # type: ignore[assignment]  # mutable, unhashable like protobuf's

    def IsInitialized(self) -> bool:  # noqa: N802
        p = self._p
        if p & self._required_mask != self._required_mask:
            return False
        for f in self._subs:  # (a loop, not _present_submessages: every loaded image is checked)
            if f.repeated:
                for m in getattr(self, f.name):
                    if not m.IsInitialized():
                        return False
            elif p & f.bit and not getattr(self, f.name).IsInitialized():
                return False
        return True

    def FindInitializationErrors(self) -> list[str]:  # noqa: N802
        """Paths of the missing required fields, in protobuf's (upb's) order and notation."""
        out: list[str] = []
        self._missing("", out)
        return out

    def _missing(self, prefix: str, out: list[str]) -> None:
        p = self._p
        out += [prefix + f.name for f in self._fields if f.required and not p & f.bit]
        for f in sorted(self._subs, key=_number):
            if f.repeated:
                for i, m in enumerate(getattr(self, f.name)):
                    m._missing(f"{prefix}{f.name}[{i}].", out)
            elif p & f.bit:
                getattr(self, f.name)._missing(f"{prefix}{f.name}.", out)

    def _present_submessages(self):
        p = self._p
        for f in self._subs:
            if f.repeated:
                yield from getattr(self, f.name)
            elif p & f.bit:
                yield getattr(self, f.name)

    def SerializeToString(self) -> bytes:  # noqa: N802
        if not self.IsInitialized():
            raise EncodeError(f"Message {self._name} is missing required fields: "
                              + ",".join(self.FindInitializationErrors()))
        return self._encode()

    def SerializePartialToString(self) -> bytes:  # noqa: N802
        return self._encode()

    def _encode(self) -> bytes:
        out = bytearray()
        p = self._p
        for f in type(self)._ordered:
            if f.repeated:
                values = getattr(self, f.name)
                if not values:
                    continue
                if f.packed:
                    if f.kind in _PLAIN_VARINTS:
                        body = b"".join([_ONE_BYTE[v] if 0 <= v < 128 else _varint(v) for v in values])
                    else:
                        body = b"".join(_encode_value(f, v) for v in values)
                    out += f.key + _varint(len(body)) + body
                elif f.kind in _PLAIN_VARINTS:  # CRIU's register arrays: key, value, key, value...
                    out += f.key + f.key.join([_ONE_BYTE[v] if 0 <= v < 128 else _varint(v) for v in values])
                else:
                    key = f.key
                    for v in values:
                        out += key + _encode_value(f, v)
            elif p & f.bit:
                out += f.key + _encode_value(f, getattr(self, f.name))
        return bytes(out)

    def __repr__(self) -> str:
        shown = []
        for f in self._fields:
            if f.repeated:
                v = getattr(self, f.name)
                if v:
                    shown.append(f"{f.name}={list(v)!r}")
            elif self._p & f.bit:
                shown.append(f"{f.name}={getattr(self, f.name)!r}")
        return f"{self._name}({', '.join(shown)})"


_SET_P = Message.__dict__["_p"].__set__  # object.__setattr__(msg, "_p", p) without its lookups


def _touch(msg: Message) -> None:
    """A submessage was modified: it, and its parents, become present (protobuf's semantics)."""
    o = getattr(msg, "_o", None)
    while o is not None:
        object.__setattr__(msg, "_o", None)
        msg, bit = o
        object.__setattr__(msg, "_p", msg._p | bit)
        o = getattr(msg, "_o", None)


class Repeated(list):
    """A repeated field: a list whose additions are checked like protobuf's (and mark the owner present)."""

    __slots__ = ("_owner", "_field")

    def __init__(self, owner: Message, field: _Field) -> None:
        super().__init__()
        self._owner = owner
        self._field = field

    def _value(self, v: Any) -> Any:
        f = self._field
        if f.kind == _MSG:
            m = (f.sub or _resolve(f))()
            m.MergeFrom(_as_message(f, v))
            return m
        return _coerce(self._owner, f, v)

    def append(self, v: Any) -> None:
        list.append(self, self._value(v))
        _touch(self._owner)

    def extend(self, values: Any) -> None:
        list.extend(self, self._values(values))
        _touch(self._owner)

    def _values(self, values: Any) -> list:
        f = self._field
        if f.range is not None and f.kind != _ENUM:  # plain integers: one pass to check them all
            vals = list(values)
            lo, hi = f.range
            if all(type(v) is int and lo <= v <= hi for v in vals):
                return vals
            values = vals
        return [self._value(v) for v in values]

    def insert(self, i: int, v: Any) -> None:
        list.insert(self, i, self._value(v))
        _touch(self._owner)

    def __iadd__(self, values: Any) -> Repeated:
        self.extend(values)
        return self

    def __setitem__(self, i: Any, v: Any) -> None:
        if self._field.kind == _MSG:
            raise TypeError("does not support assignment")
        list.__setitem__(self, i, self._values(v) if isinstance(i, slice) else self._value(v))

    def add(self, **fields: Any) -> Message:
        """A new message appended to a repeated message field (protobuf's add())."""
        f = self._field
        if f.kind != _MSG:
            raise AttributeError("'RepeatedScalarContainer' object has no attribute 'add'")
        m = (f.sub or _resolve(f))(**fields)
        list.append(self, m)
        _touch(self._owner)
        return m


def _as_message(f: _Field, v: Any) -> Message:
    sub = f.sub or _resolve(f)
    if isinstance(v, dict):
        return sub(**v)
    if not isinstance(v, sub):
        raise TypeError(f"Parameter to CopyFrom() must be instance of same class: expected {f.type_name} got "
                        f"{type(v).__name__}.")
    return v


def _coerce(msg: Message, f: _Field, v: Any) -> Any:
    """A scalar value as protobuf stores it, or the error protobuf raises for it."""
    k = f.kind
    if f.range is not None:  # an integer field (enums and fixed-size ones included)
        if k == _ENUM and isinstance(v, str):  # an enum takes its value names too
            names = dict(ENUMS[f.type_name])
            if v not in names:
                raise ValueError(f'unknown enum label "{v}"')
            return names[v]
        if isinstance(v, bool):
            raise TypeError(f"Field {msg._name}.{f.name}: Expected an int, got a boolean.")
        v = v if type(v) is int else _index(v)
        lo, hi = f.range
        if not lo <= v <= hi:
            raise ValueError(f"Value out of range: {v}")
        if k == _ENUM and v not in f.enum_values:
            raise ValueError(f"invalid enumerator {v}")
        return v
    if k == _BOOL:
        v = v if type(v) is int else _index(v)
        if not -(1 << 63) <= v < 1 << 63:  # protobuf converts through a C long
            raise OverflowError("Python int too large to convert to C long")
        return bool(v)
    if k == _STR:
        if isinstance(v, bytes):
            return v.decode()
        if not isinstance(v, str):
            raise TypeError(f"{v!r} has type {type(v).__name__}, but expected one of: bytes, str")
        return v
    if k == _BYTES:
        if not isinstance(v, (bytes, bytearray, memoryview)):
            raise TypeError(f"{v!r} has type {type(v).__name__}, but expected one of: bytes")
        return bytes(v)
    v = float(v)  # float / double
    return struct.unpack("<f", struct.pack("<f", v))[0] if f.type == "float" else v


def _index(v: Any) -> int:
    """operator.index (imported only for a value that is not a plain int: decoding never needs it)."""
    from operator import index

    return index(v)


def _number(f: _Field) -> int:
    return f.number


_PLAIN_VARINTS = frozenset((_U64, _U32, _I64, _I32, _ENUM))  # encoded as the value itself


def _encode_value(f: _Field, v: Any) -> bytes:
    k = f.kind
    if k in _PLAIN_VARINTS:
        return _ONE_BYTE[v] if 0 <= v < 128 else _varint(v)
    if k == _BOOL:
        return b"\x01" if v else b"\x00"
    if k == _S64:
        return _varint((v << 1) ^ (v >> 63))
    if k == _S32:
        return _varint(((v << 1) ^ (v >> 31)) & _MASK32)
    if k in (_F32, _F64):
        return struct.pack("<" + f.fmt, v)
    if k == _MSG:
        body = v._encode()
    elif k == _STR and isinstance(v, str):
        body = v.encode()
    else:
        body = bytes(v)
    return _varint(len(body)) + body


_classes: dict[str, type[Message]] = {}


def message_class(name: str) -> type[Message]:
    """The light class of a CRIU message (e.g. "core_entry"), created on first use."""
    cls = _classes.get(name)
    if cls is not None:
        return cls
    rows = MESSAGES.get(name)
    if rows is None:
        raise KeyError(f"no message {name!r} in the schemas")
    cls = type(name, (Message,), {"__slots__": tuple(r[1] for r in rows), "_name": name})
    fields = tuple(_Field(r, i, cls) for i, r in enumerate(rows))
    cls._fields = fields
    cls._ordered = tuple(sorted(fields, key=_number))  # the encoding order
    cls._by_number = {f.number: f for f in fields}
    cls._by_tag = {f.number << 3 | f.wire: f for f in fields}
    cls._by_tag.update({f.number << 3 | 2: f for f in fields if f.packable})
    cls._by_name = {f.name: f for f in fields}
    cls._required_mask = sum(f.bit for f in fields if f.required)
    cls._subs = tuple(f for f in fields if f.kind == _MSG)
    _classes[name] = cls
    return cls


def required_fields(msg: Message) -> list[str]:
    """Names of a message's required fields, in declaration order."""
    return [f.name for f in type(msg)._fields if f.required]


def enum_numbers(enum: str) -> dict[str, int]:
    """value name -> number of an enum (protobuf's values_by_name)."""
    return dict(ENUMS[enum])


def enum_names(enum: str) -> dict[int, str]:
    """number -> value name of an enum (the first name of a number, as protobuf's values_by_number)."""
    out: dict[int, str] = {}
    for name, number in ENUMS[enum]:
        out.setdefault(number, name)
    return out


# ---------------------------------------------------------------- decoding


def decode(name: str, data: bytes, start: int = 0, end: int | None = None) -> Message:
    """Decode data[start:end] as message `name`; DecodeError on malformed input (never another error)."""
    cls = message_class(name)
    buf = bytes(data)
    end = len(buf) if end is None else end
    msg = cls.__new__(cls)
    try:
        _merge(msg, 0, buf, start, end, MAX_DEPTH)
    except IndexError:
        raise DecodeError("truncated data") from None
    except (struct.error, OverflowError, RecursionError) as e:  # defensive: none expected
        raise DecodeError(f"malformed data ({e})") from None
    return msg


def _varint_tail(buf: bytes, pos: int, b: int) -> tuple[int, int]:
    """The rest of a varint whose first byte b (>= 0x80) came just before pos."""
    v = b & 0x7F
    # unrolled up to 8 bytes (user-space addresses take 7), the rest in the loop below
    b = buf[pos]
    if b < 0x80:
        return v | b << 7, pos + 1
    v |= (b & 0x7F) << 7
    b = buf[pos + 1]
    if b < 0x80:
        return v | b << 14, pos + 2
    v |= (b & 0x7F) << 14
    b = buf[pos + 2]
    if b < 0x80:
        return v | b << 21, pos + 3
    v |= (b & 0x7F) << 21
    b = buf[pos + 3]
    if b < 0x80:
        return v | b << 28, pos + 4
    v |= (b & 0x7F) << 28
    b = buf[pos + 4]
    if b < 0x80:
        return v | b << 35, pos + 5
    v |= (b & 0x7F) << 35
    b = buf[pos + 5]
    if b < 0x80:
        return v | b << 42, pos + 6
    v |= (b & 0x7F) << 42
    b = buf[pos + 6]
    if b < 0x80:
        return v | b << 49, pos + 7
    v |= (b & 0x7F) << 49
    pos += 7
    shift = 56
    while True:
        b = buf[pos]
        pos += 1
        v |= (b & 0x7F) << shift
        if b < 0x80:
            return v & _MASK64, pos
        shift += 7
        if shift > 63:
            raise DecodeError(f"varint longer than 10 bytes at byte {pos}")


def _small_varint(buf: bytes, pos: int, what: str) -> tuple[int, int]:
    """A tag or length: at most 5 bytes and 32 bits, as upb reads them."""
    b = buf[pos]
    if b < 0x80:
        return b, pos + 1
    start = pos
    v, pos = _varint_tail(buf, pos + 1, b)
    if pos - start > 5 or v > _MASK32:
        raise DecodeError(f"bad {what} varint at byte {start}")
    return v, pos


def _scalar(kind: int, v: int) -> Any:
    if kind == _U64:
        return v
    if kind == _U32:
        return v & _MASK32
    if kind == _I64:
        return v - (1 << 64) if v >> 63 else v
    if kind in (_I32, _ENUM):
        v &= _MASK32
        return v - (1 << 32) if v >> 31 else v
    if kind == _BOOL:
        return v != 0
    if kind == _S64:
        return (v >> 1) ^ -(v & 1)
    v &= _MASK32  # _S32
    return (v >> 1) ^ -(v & 1)


def _merge(msg: Message, p: int, buf: bytes, pos: int, end: int, depth: int) -> None:
    """Parse buf[pos:end] into msg, whose presence bits are p (protobuf's MergeFromString)."""
    by_tag = type(msg)._by_tag
    lists: dict[int, list] = {}
    set_p = _SET_P
    while pos < end:
        key = buf[pos]
        if key < 0x80:
            pos += 1
        else:
            key, pos = _small_varint(buf, pos, "tag")
        f = by_tag.get(key)
        if f is None:  # an unknown field, or a known one with a wire type its type cannot have
            pos = _skip(buf, pos, end, key, depth)
            continue
        wire = key & 7
        kind = f.kind
        if wire == 0:
            b = buf[pos]
            if b < 0x80:
                v = b
                pos += 1
            else:
                v, pos = _varint_tail(buf, pos + 1, b)
            if pos > end:
                raise DecodeError(f"truncated varint of field {f.name} at byte {pos}")
            if kind == _U64:
                pass
            elif kind == _U32:
                v &= _MASK32
            elif kind == _BOOL:
                v = v != 0
            else:
                v = _scalar(kind, v)
                if kind == _ENUM and v not in f.enum_values:
                    continue  # proto2: an unknown enum value is an unknown field
        elif wire == 2:
            n, pos = _small_varint(buf, pos, "length")
            stop = pos + n
            if stop > end:
                raise DecodeError(f"field {f.name}: length {n} at byte {pos} runs past the end")
            if kind == _MSG:
                if depth <= 0:
                    raise DecodeError("message nested too deeply")
                if f.repeated or not p & f.bit:
                    sub = f.sub or _resolve(f)
                    v = sub.__new__(sub)
                    _merge(v, 0, buf, pos, stop, depth - 1)
                else:
                    v = getattr(msg, f.name)  # a second occurrence merges into the first
                    _merge(v, v._p, buf, pos, stop, depth - 1)
                pos = stop
            elif kind == _STR:
                raw = buf[pos:stop]
                pos = stop
                try:
                    v = raw.decode()
                except UnicodeDecodeError:
                    v = raw  # upb hands out a string that is not UTF-8 as bytes
            elif kind == _BYTES:
                v = buf[pos:stop]
                pos = stop
            else:  # packed repeated scalars
                lst = lists.get(f.number)
                if lst is None:
                    lst = lists[f.number] = getattr(msg, f.name)
                _packed(f, buf, pos, stop, lst)
                pos = stop
                continue
        else:  # fixed 32/64
            size = 4 if wire == 5 else 8
            if pos + size > end:
                raise DecodeError(f"truncated fixed{size * 8} of field {f.name} at byte {pos}")
            (v,) = struct.unpack_from("<" + f.fmt, buf, pos)
            pos += size
        if f.repeated:
            lst = lists.get(f.number)
            if lst is None:
                lst = lists[f.number] = getattr(msg, f.name)
            list.append(lst, v)
            if wire == 0 and key < 0x80 and kind in (_U32, _U64):
                # the rest of a run of the same unpacked field (CRIU's register arrays): no lookups
                mask = _MASK32 if kind == _U32 else _MASK64
                while pos < end and buf[pos] == key:
                    b = buf[pos + 1]
                    if b < 0x80:
                        v = b
                        pos += 2
                    else:
                        v, pos = _varint_tail(buf, pos + 2, b)
                    if pos > end:
                        raise DecodeError(f"truncated varint of field {f.name} at byte {pos}")
                    list.append(lst, v & mask)
        else:
            f.set(msg, v)
            p |= f.bit
    set_p(msg, p)


def _resolve(f: _Field) -> type[Message]:
    f.sub = message_class(f.type_name)
    return f.sub


def _packed(f: _Field, buf: bytes, pos: int, stop: int, out: list) -> None:
    if f.wire != 0:
        size = 4 if f.wire == 5 else 8
        n, rem = divmod(stop - pos, size)
        if rem:
            raise DecodeError(f"packed field {f.name}: {stop - pos} bytes is not a multiple of {size}")
        list.extend(out, struct.unpack_from(f"<{n}{f.fmt}", buf, pos))
        return
    kind = f.kind
    while pos < stop:
        b = buf[pos]
        if b < 0x80:
            v = b
            pos += 1
        else:
            v, pos = _varint_tail(buf, pos + 1, b)
        if pos > stop:
            raise DecodeError(f"packed field {f.name}: truncated varint at byte {pos}")
        if kind != _U64:
            v = _scalar(kind, v)
            if kind == _ENUM and v not in f.enum_values:
                continue
        list.append(out, v)


def _skip(buf: bytes, pos: int, end: int, key: int, depth: int) -> int:
    """Skip an unknown field's value; returns the position after it."""
    number, wire = key >> 3, key & 7
    if number == 0:
        raise DecodeError(f"field number 0 at byte {pos}")
    if wire == 0:
        b = buf[pos]
        pos = pos + 1 if b < 0x80 else _varint_tail(buf, pos + 1, b)[1]
    elif wire == 1:
        pos += 8
    elif wire == 5:
        pos += 4
    elif wire == 2:
        n, pos = _small_varint(buf, pos, "length")
        pos += n
    elif wire == 3:
        if depth <= 0:
            raise DecodeError("group nested too deeply")
        while True:
            if pos >= end:
                raise DecodeError(f"group {number} not closed")
            k, pos = _small_varint(buf, pos, "tag")
            if k & 7 == 4:
                if k >> 3 != number:
                    raise DecodeError(f"group {number} closed by end-group {k >> 3}")
                break
            pos = _skip(buf, pos, end, k, depth - 1)
    else:
        raise DecodeError(f"wire type {wire} of field {number} at byte {pos}")
    if pos > end:
        raise DecodeError(f"field {number} runs past the end")
    return pos
