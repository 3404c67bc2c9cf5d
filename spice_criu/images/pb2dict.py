# SPDX-License-Identifier: MIT
"""Protobuf messages and whole images <-> the JSON dicts CRIU 4.2.1's crit reads and writes.

The rules are crit's (lib/pycriu/images/pb2dict.py, images.py), so `spice crit` and pycriu users see
the same JSON:

* fields in field-number order, only those present; enums by name; bytes as base64 with
  `base64.encodebytes` line breaks; unix socket names (`(criu).conv = "unix_name"`) as quoted-printable,
  pretty or not;
* `pretty` only: `(criu).hex` ints as "0x..", inherited by every int below a hex message field;
  `(criu).dev` as "major:minor" (kernel or, with `odev`, glibc encoding); `(criu).flags` as "A | B | 0x..";
  `(criu).dict` values by name; `(criu).ipadd` repeated u32 as one IPv4/IPv6 address string;
* extra payloads under "extra": base64, tcp-stream {"inq", "outq"}, ipc sem value lists, ipc msg
  [msg, data, ...] lists, ghost file data/chunks; `no_payload` shows "... <SIZE>" instead.

The way back accepts everything crit accepts (ints as numbers, "0x.." or decimal strings, flag and dict
names, dev strings, addresses). Conversion plans are built once per message type and cached, so
decoding does no per-field option reflection. One deliberate extension: a proto2 `string` holding
invalid UTF-8 (crit crashes on it) becomes a str with surrogate escapes, and is written back byte for
byte.
"""

from __future__ import annotations

import binascii
import os
from collections.abc import Callable
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from . import codec
from .pb.criu_opts import CRIU_OPTS
from .wire import length_delimited

FD = FieldDescriptor


class JsonError(ValueError):
    """A crit JSON value that cannot become an image; `path` says where (e.g. entries[3].reg.flags)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message


# ------------------------------------------------------------------ crit's value maps (pb2dict.py)

FLAGS_MAPS: dict[str, list[tuple[str, int]]] = {
    "mmap.prot": [("PROT_READ", 0x1), ("PROT_WRITE", 0x2), ("PROT_EXEC", 0x4)],
    "mmap.flags": [
        ("MAP_SHARED", 0x1),
        ("MAP_PRIVATE", 0x2),
        ("MAP_DROPPABLE", 0x08),
        ("MAP_ANON", 0x20),
        ("MAP_GROWSDOWN", 0x0100),
    ],
    "mmap.status": [
        ("VMA_AREA_NONE", 0),
        ("VMA_AREA_REGULAR", 1 << 0),
        ("VMA_AREA_STACK", 1 << 1),
        ("VMA_AREA_VSYSCALL", 1 << 2),
        ("VMA_AREA_VDSO", 1 << 3),
        ("VMA_AREA_HEAP", 1 << 5),
        ("VMA_FILE_PRIVATE", 1 << 6),
        ("VMA_FILE_SHARED", 1 << 7),
        ("VMA_ANON_SHARED", 1 << 8),
        ("VMA_ANON_PRIVATE", 1 << 9),
        ("VMA_AREA_SYSVIPC", 1 << 10),
        ("VMA_AREA_SOCKET", 1 << 11),
        ("VMA_AREA_VVAR", 1 << 12),
        ("VMA_AREA_AIORING", 1 << 13),
        ("VMA_AREA_MEMFD", 1 << 14),
        ("VMA_AREA_SHSTK", 1 << 15),
        ("VMA_AREA_UPROBES", 1 << 17),
        ("VMA_UNSUPP", 1 << 31),
    ],
    "rfile.flags": [
        ("O_WRONLY", 0o1),
        ("O_RDWR", 0o2),
        ("O_CREAT", 0o100),
        ("O_EXCL", 0o200),
        ("O_NOCTTY", 0o400),
        ("O_TRUNC", 0o1000),
        ("O_APPEND", 0o2000),
        ("O_NONBLOCK", 0o4000),
        ("O_DSYNC", 0o10000),
        ("FASYNC", 0o20000),
        ("O_DIRECT", 0o40000),
        ("O_LARGEFILE", 0o100000),
        ("O_DIRECTORY", 0o200000),
        ("O_NOFOLLOW", 0o400000),
        ("O_NOATIME", 0o1000000),
        ("O_CLOEXEC", 0o2000000),
    ],
    "pmap.flags": [("PE_PARENT", 1 << 0), ("PE_LAZY", 1 << 1), ("PE_PRESENT", 1 << 2)],
    "seals.flags": [
        ("F_SEAL_SEAL", 0x0001),
        ("F_SEAL_SHRINK", 0x0002),
        ("F_SEAL_GROW", 0x0004),
        ("F_SEAL_WRITE", 0x0008),
        ("F_SEAL_FUTURE_WRITE", 0x0010),
    ],
}

# (criu).dict maps, keyed by the field's name. crit's task_state names are its own (3 is STOPPED in
# CRIU, "Zombie" here); kept as they are so the JSON round-trips with crit's.
DICT_MAPS: dict[str, dict[str, dict[int, str]]] = {
    "gen": {"task_state": {1: "Alive", 3: "Zombie", 6: "Stopped"}},
    "sk": {
        "family": {1: "UNIX", 2: "INET", 10: "INET6", 16: "NETLINK", 17: "PACKET"},
        "type": {1: "STREAM", 2: "DGRAM", 3: "RAW", 5: "SEQPACKET", 10: "PACKET"},
        "state": {
            1: "ESTABLISHED",
            2: "SYN_SENT",
            3: "SYN_RECV",
            4: "FIN_WAIT1",
            5: "FIN_WAIT2",
            6: "TIME_WAIT",
            7: "CLOSE",
            8: "CLOSE_WAIT",
            9: "LAST_ACK",
            10: "LISTEN",
        },
        "proto": {0: "IP", 6: "TCP", 17: "UDP", 136: "UDPLITE"},
    },
}

_INT_TYPES = frozenset(
    {
        FD.TYPE_INT32, FD.TYPE_INT64, FD.TYPE_UINT32, FD.TYPE_UINT64, FD.TYPE_SINT32, FD.TYPE_SINT64,
        FD.TYPE_FIXED32, FD.TYPE_FIXED64, FD.TYPE_SFIXED32, FD.TYPE_SFIXED64,
    }
)  # fmt: skip
_KERN_MINORBITS = 20


def map_flags(value: int, flags_map: list[tuple[str, int]]) -> str:
    names = [n for n, bit in flags_map if value & bit]
    rest = value & ~sum(bit for _, bit in flags_map)
    if rest:
        names.append(f"0x{rest:x}")
    return " | ".join(names)


def unmap_flags(value: str, flags_map: list[tuple[str, int]]) -> int:
    if value == "":
        return 0
    names = dict(flags_map)
    total = 0
    for part in value.split("|"):
        part = part.strip()
        total += names[part] if part in names else _parse_int(part)
    return total


def _parse_int(s: str) -> int:
    """crit's int(s, 0), plus the "0x-5" crit itself prints for negative hex fields."""
    t = s.strip()
    if t[:3].lower() == "0x-":
        return -int(t[3:], 16)
    return int(t, 0)


def encode_base64(data: bytes) -> str:
    """base64.encodebytes, as crit writes bytes: 76-char lines, each ending in a newline."""
    return "".join(binascii.b2a_base64(data[i : i + 57]).decode() for i in range(0, len(data), 57))


def decode_base64(text: Any, path: str = "") -> bytes:
    if not isinstance(text, str):
        raise JsonError(path, f"expected a base64 string, got {type(text).__name__}")
    if text.startswith("... <"):
        raise JsonError(path, f"payload was left out ({text!r}, decoded with --nopl): cannot encode it")
    try:
        return binascii.a2b_base64(text.encode("ascii"))
    except (binascii.Error, UnicodeEncodeError) as e:
        raise JsonError(path, f"bad base64: {e}") from None


def _encode_unix(data: bytes) -> str:
    return binascii.b2a_qp(data, quotetabs=False, istext=True, header=False).decode()


def _decode_unix(text: str) -> bytes:
    return binascii.a2b_qp(text.encode("ascii", "strict"), header=False)


def decode_dev(value: int, odev: bool) -> str:
    if odev:
        return f"{os.major(value)}:{os.minor(value)}"
    return f"{value >> _KERN_MINORBITS}:{value & ((1 << _KERN_MINORBITS) - 1)}"


def encode_dev(value: str, odev: bool) -> int:
    major, minor = (int(x) for x in value.split(":"))
    return os.makedev(major, minor) if odev else major << _KERN_MINORBITS | minor


def _swap32(w: int) -> int:
    """ntohl/htonl on little-endian x86, where CRIU wrote these words."""
    return int.from_bytes(w.to_bytes(4, "little"), "big")


def _ipaddr(words) -> str:
    from ipaddress import IPv4Address, IPv6Address

    if len(words) == 1:
        return IPv4Address(_swap32(words[0])).compressed
    v = 0
    for w in words[:4]:
        v = v << 32 | _swap32(w)
    return IPv6Address(v).compressed


def _addr_words(text: str) -> list[int]:
    from ipaddress import ip_address

    a = ip_address(text)
    if a.version == 4:
        return [_swap32(int(a))]
    v = int(a)
    return [_swap32((v >> s) & 0xFFFFFFFF) for s in (96, 64, 32, 0)]


def _str_value(v: str | bytes) -> str:
    # upb hands back a proto2 string holding invalid UTF-8 as bytes
    return v.decode("utf-8", "surrogateescape") if isinstance(v, bytes) else v


# ------------------------------------------------------------------ message -> dict

Conv = Callable[[Any], Any] | None
_plans: dict[tuple[str, bool, bool], dict[int, tuple[str, Conv]]] = {}


def _opts(desc: Descriptor, f: FieldDescriptor) -> dict[str, object]:
    return CRIU_OPTS.get(f"{desc.name}.{f.name}", {})


def _scalar_conv(desc: Descriptor, f: FieldDescriptor, pretty: bool, hexed: bool) -> Conv:
    """How one value of field f is shown; None: as it is."""
    o = _opts(desc, f)
    t = f.type
    if t == FD.TYPE_MESSAGE:
        sub = _plan(f.message_type, pretty, hexed or bool(o.get("hex")))
        return lambda v: _to_dict(v, sub)
    if t == FD.TYPE_BYTES:
        return (lambda v: _encode_unix(v)) if o.get("conv") == "unix_name" else encode_base64
    if t == FD.TYPE_ENUM:
        names = {v.number: v.name for v in f.enum_type.values}
        return lambda v: names.get(v, v)
    if t == FD.TYPE_STRING:
        return _str_value
    if t not in _INT_TYPES or not pretty:
        return None
    if hexed or o.get("hex"):
        return lambda v: f"0x{v:x}"
    if o.get("dev"):
        odev = bool(o.get("odev"))
        return lambda v: decode_dev(v, odev)
    if o.get("flags"):
        fmap = FLAGS_MAPS.get(str(o["flags"]))
        if fmap is None:
            return lambda v: f"0x{v:x}"
        return lambda v: map_flags(v, fmap)
    if o.get("dict"):
        names = DICT_MAPS.get(str(o["dict"]), {}).get(f.name, {})
        return lambda v: names.get(v, v)
    return None


def _field_conv(desc: Descriptor, f: FieldDescriptor, pretty: bool, hexed: bool) -> Conv:
    one = _scalar_conv(desc, f, pretty, hexed)
    if not f.is_repeated:
        return one
    if pretty and _opts(desc, f).get("ipadd"):
        # crit shows 1 word as IPv4, 4 as IPv6 (and crashes on other counts: shown as numbers here)
        return lambda v: [_ipaddr(v)] if len(v) in (1, 4) else list(v)
    if one is None:
        return list
    return lambda v: [one(x) for x in v]


def _plan(desc: Descriptor, pretty: bool, hexed: bool) -> dict[int, tuple[str, Conv]]:
    hexed = hexed and pretty
    key = (desc.full_name, pretty, hexed)
    plan = _plans.get(key)
    if plan is None:
        plan = _plans[key] = {}  # registered first: message types may recurse
        for f in desc.fields:
            plan[f.number] = (f.name, _field_conv(desc, f, pretty, hexed))
    return plan


def _to_dict(msg: Message, plan: dict[int, tuple[str, Conv]]) -> dict[str, Any]:
    d = {}
    for f, v in msg.ListFields():
        name, conv = plan[f.number]
        d[name] = v if conv is None else conv(v)
    return d


def pb2dict(msg: Message, pretty: bool = False) -> dict[str, Any]:
    """One message as crit shows it."""
    return _to_dict(msg, _plan(msg.DESCRIPTOR, pretty, False))


# ------------------------------------------------------------------ dict -> message

Setter = Callable[[Message, Any, str], None]
_rplans: dict[str, list[tuple[str, Setter]]] = {}


def _bad(path: str, what: str, value: Any) -> JsonError:
    return JsonError(path, f"{what}: {value!r}")


def _int_caster(desc: Descriptor, f: FieldDescriptor) -> Callable[[Any, str], int]:
    o = _opts(desc, f)
    odev = bool(o.get("odev"))
    fmap = FLAGS_MAPS.get(str(o.get("flags", "")))
    names = {v: k for k, v in DICT_MAPS.get(str(o.get("dict", "")), {}).get(f.name, {}).items()}
    dev = bool(o.get("dev"))

    def cast(v: Any, path: str) -> int:
        try:
            if isinstance(v, str):
                if dev:
                    return encode_dev(v, odev)
                if fmap is not None:
                    return unmap_flags(v, fmap)
                if v in names:
                    return names[v]
                return _parse_int(v)
            return int(v)
        except (ValueError, TypeError, OverflowError):
            raise _bad(path, "not a valid integer", v) from None

    return cast


def _scalar_caster(desc: Descriptor, f: FieldDescriptor) -> Callable[[Any, str], Any]:
    t = f.type
    if t in _INT_TYPES:
        return _int_caster(desc, f)
    if t == FD.TYPE_BOOL:
        return lambda v, path: bool(v)
    if t == FD.TYPE_STRING:
        return lambda v, path: v if isinstance(v, str) else str(v)
    if t == FD.TYPE_BYTES:
        if _opts(desc, f).get("conv") == "unix_name":

            def unix(v: Any, path: str) -> bytes:
                try:
                    return _decode_unix(v)
                except (UnicodeEncodeError, AttributeError, TypeError, binascii.Error):
                    raise _bad(path, "bad quoted-printable socket name", v) from None

            return unix
        return lambda v, path: decode_base64(v, path)
    if t == FD.TYPE_ENUM:
        by_name = {v.name: v.number for v in f.enum_type.values}
        numbers = set(by_name.values())

        def enum(v: Any, path: str) -> int:
            if isinstance(v, str) and v in by_name:
                return by_name[v]
            if isinstance(v, int) and not isinstance(v, bool) and v in numbers:
                return v
            raise _bad(path, f"not a {f.enum_type.name} value", v)

        return enum
    raise JsonError("", f"field {f.full_name} has unsupported type {t}")


def _raw_string(f: FieldDescriptor, s: str) -> bytes:
    """A length-delimited wire field carrying s's original (possibly non-UTF-8) bytes."""
    data = s.encode("utf-8", "surrogateescape")
    return length_delimited(f.number, data)


def _setter(desc: Descriptor, f: FieldDescriptor) -> Setter:
    name = f.name
    if f.type == FD.TYPE_MESSAGE:
        if f.is_repeated:

            def add_msgs(msg: Message, value: Any, path: str) -> None:
                box = getattr(msg, name)
                for i, v in enumerate(_as_list(value, path)):
                    dict2pb(v, box.add(), f"{path}[{i}]")

            return add_msgs

        def set_msg(msg: Message, value: Any, path: str) -> None:
            sub = getattr(msg, name)
            sub.SetInParent()
            dict2pb(value, sub, path)

        return set_msg

    cast = _scalar_caster(desc, f)
    is_str = f.type == FD.TYPE_STRING
    ipadd = bool(_opts(desc, f).get("ipadd"))
    if f.is_repeated:

        def add_values(msg: Message, value: Any, path: str) -> None:
            value = _as_list(value, path)
            box = getattr(msg, name)
            if ipadd and value and isinstance(value[0], str):
                try:
                    box.extend(_addr_words(value[0]))
                except ValueError:
                    raise _bad(f"{path}[0]", "not an IP address", value[0]) from None
                return
            for i, v in enumerate(value):
                x = cast(v, f"{path}[{i}]")
                if is_str:
                    _put_string(msg, f, x, lambda x=x: box.append(x))
                else:
                    _checked(lambda x=x: box.append(x), f"{path}[{i}]", x)

        return add_values

    def set_value(msg: Message, value: Any, path: str) -> None:
        x = cast(value, path)
        if is_str:
            _put_string(msg, f, x, lambda: setattr(msg, name, x))
        else:
            _checked(lambda: setattr(msg, name, x), path, x)

    return set_value


def _checked(put: Callable[[], None], path: str, x: Any) -> None:
    try:
        put()
    except (ValueError, TypeError) as e:
        raise JsonError(path, f"{x!r} does not fit: {e}") from None


def _put_string(msg: Message, f: FieldDescriptor, s: str, put: Callable[[], None]) -> None:
    try:
        put()
    except (UnicodeError, ValueError):
        msg.MergeFromString(_raw_string(f, s))


def _as_list(value: Any, path: str) -> list:
    if not isinstance(value, list):
        raise _bad(path, "expected a list", value)
    return value


def _rplan(desc: Descriptor) -> list[tuple[str, Setter]]:
    plan = _rplans.get(desc.full_name)
    if plan is None:
        plan = _rplans[desc.full_name] = [(f.name, _setter(desc, f)) for f in desc.fields]
    return plan


def dict2pb(d: Any, msg: Message, path: str = "") -> Message:
    """Fill msg from crit's dict (keys it does not know are ignored, as crit does)."""
    if not isinstance(d, dict):
        raise _bad(path, f"expected an object for {msg.DESCRIPTOR.name}", d)
    for name, put in _rplan(msg.DESCRIPTOR):
        if name in d:
            put(msg, d[name], f"{path}.{name}" if path else name)
    return msg


# ------------------------------------------------------------------ whole images


def human_readable(num: float) -> str:
    """crit's payload size label for `show --nopl`."""
    for unit in ["", "K", "M", "G", "T", "P", "E", "Z"]:
        if num < 1024.0:
            return f"{int(num)}{unit}B" if int(num) == num else f"{num:.1f}{unit}B"
        num /= 1024.0
    return f"{num:.1f}YB"


def _payload_size(magic: str, msg: Message, extra: Any) -> int:
    if magic in ("PIPES_DATA", "FIFO_DATA"):
        return msg.bytes
    if magic == "SK_QUEUES":
        return msg.length
    if magic == "TCP_STREAM":
        return msg.inq_len + msg.outq_len
    if magic == "BPFMAP_DATA":
        return msg.keys_bytes + msg.values_bytes
    if magic == "IPCNS_SHM":
        return msg.size
    if magic == "IPCNS_SEM":
        return 2 * msg.nsems
    if magic == "IPCNS_MSG":
        return sum(m.ByteSize() + m.msize for m, _ in extra)
    raise AssertionError(magic)


def _extra_to_json(magic: str, extra: Any) -> Any:
    if magic == "TCP_STREAM":
        return {"inq": encode_base64(extra[0]), "outq": encode_base64(extra[1])}
    if magic == "IPCNS_SEM":
        return list(extra)
    if magic == "IPCNS_MSG":
        out: list[Any] = []
        for m, data in extra:
            out += [pb2dict(m), encode_base64(data)]
        return out
    return encode_base64(extra)


_PAYLOAD_KINDS = frozenset(
    {"PIPES_DATA", "FIFO_DATA", "SK_QUEUES", "TCP_STREAM", "BPFMAP_DATA", "IPCNS_SHM", "IPCNS_SEM", "IPCNS_MSG"}
)


def image_to_dict(img: codec.Image, pretty: bool = False, no_payload: bool = False) -> dict[str, Any]:
    """A decoded image as crit's {"magic": NAME, "entries": [...]}."""
    magic = img.magic
    entries = []
    if magic in _PAYLOAD_KINDS:
        for e in img.entries:
            d = pb2dict(e.msg, pretty)
            if no_payload:
                d["extra"] = f"... <{human_readable(_payload_size(magic, e.msg, e.extra))}>"
            else:
                d["extra"] = _extra_to_json(magic, e.extra)
            entries.append(d)
    elif magic == "GHOST_FILE":
        for e in img.entries:
            d = pb2dict(e.msg, pretty)
            if e.extra is not None and not no_payload:
                d["extra"] = encode_base64(e.extra)
            entries.append(d)
    else:
        for e in img.entries:
            entries.append(pb2dict(e.msg, pretty))
    return {"magic": magic, "entries": entries}


def _msg(cls: type[Message], d: Any, path: str) -> Message:
    msg = dict2pb(d, cls(), path)
    if not msg.IsInitialized():  # crit dies in SerializeToString; CRIU would refuse the image
        missing = ", ".join(msg.FindInitializationErrors())
        raise JsonError(path, f"{cls.DESCRIPTOR.name} lacks required field(s): {missing}")
    return msg


def _declared(path: str, data: bytes, want: int, what: str) -> bytes:
    if len(data) != want:
        raise JsonError(path, f"extra holds {len(data)} bytes but {what} says {want}")
    return data


def _extra_from_json(magic: str, msg: Message, d: dict, path: str) -> Any:
    x = d.get("extra")
    p = f"{path}.extra"
    if magic in ("PIPES_DATA", "FIFO_DATA"):
        return _declared(p, decode_base64(x or "", p), msg.bytes, "bytes")
    if magic == "SK_QUEUES":
        return _declared(p, decode_base64(x or "", p), msg.length, "length")
    if magic == "BPFMAP_DATA":
        return _declared(p, decode_base64(x or "", p), msg.keys_bytes + msg.values_bytes,
                         "keys_bytes + values_bytes")  # fmt: skip
    if magic == "TCP_STREAM":
        x = x or {"inq": "", "outq": ""}
        if not isinstance(x, dict):
            raise _bad(p, 'expected {"inq": ..., "outq": ...}', x)
        inq = _declared(f"{p}.inq", decode_base64(x.get("inq", ""), f"{p}.inq"), msg.inq_len, "inq_len")
        outq = _declared(f"{p}.outq", decode_base64(x.get("outq", ""), f"{p}.outq"), msg.outq_len, "outq_len")
        return inq, outq
    if magic == "IPCNS_SHM":
        data = decode_base64(x or "", p)
        if msg.in_pagemaps:
            if data:
                raise JsonError(p, "must be empty: in_pagemaps says the contents are in pagemap-shmem")
            return b""
        if len(data) < msg.size:
            raise JsonError(p, f"extra holds {len(data)} bytes but size says {msg.size}")
        return data[: msg.size]
    if magic == "IPCNS_SEM":
        vals = _as_list(x if x is not None else [], p)
        if len(vals) != msg.nsems:
            raise JsonError(p, f"{len(vals)} semaphore values but nsems says {msg.nsems}")
        for i, v in enumerate(vals):
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < 1 << 16:
                raise _bad(f"{p}[{i}]", "not a u16 semaphore value", v)
        return vals
    if magic == "IPCNS_MSG":
        items = _as_list(x if x is not None else [], p)
        if len(items) != 2 * msg.qnum:
            raise JsonError(p, f"{len(items) // 2} messages but qnum says {msg.qnum}")
        out = []
        for i in range(0, len(items), 2):
            m = _msg(codec.pb("ipc_msg"), items[i], f"{p}[{i}]")
            data = decode_base64(items[i + 1], f"{p}[{i + 1}]")
            if len(data) < m.msize:
                raise JsonError(f"{p}[{i + 1}]", f"holds {len(data)} bytes but msize says {m.msize}")
            out.append((m, data[: m.msize]))
        return out
    raise AssertionError(magic)


def dict_to_image(obj: Any) -> codec.Image:
    """crit's JSON image back into an Image (raises JsonError naming the bad spot)."""
    if not isinstance(obj, dict):
        raise _bad("", "expected an object with magic and entries", obj)
    magic = obj.get("magic")
    if not isinstance(magic, str) or not codec.has_entries(magic):
        raise _bad("magic", "unknown image magic", magic)
    entries = _as_list(obj.get("entries", []), "entries")
    out: list[codec.Entry] = []
    if magic == "PAGEMAP":
        for i, d in enumerate(entries):
            cls = codec.pb("pagemap_head") if i == 0 else codec.entry_class("PAGEMAP")
            out.append(codec.Entry(_msg(cls, d, f"entries[{i}]")))
    elif magic == "GHOST_FILE":
        if not entries:
            raise JsonError("entries", "a GHOST_FILE image needs its ghost_file_entry")
        head = _msg(codec.entry_class("GHOST_FILE"), entries[0], "entries[0]")
        if not head.chunks:
            if len(entries) > 1:
                raise JsonError("entries", "a ghost file without chunks has exactly one entry")
            if "extra" not in entries[0]:
                raise JsonError("entries[0]", "no 'extra' (the file's contents)")
            out.append(codec.Entry(head, decode_base64(entries[0]["extra"], "entries[0].extra")))
        else:
            out.append(codec.Entry(head))
            for i, d in enumerate(entries[1:], 1):
                chunk = _msg(codec.pb("ghost_chunk_entry"), d, f"entries[{i}]")
                p = f"entries[{i}].extra"
                if "extra" not in d:
                    raise JsonError(f"entries[{i}]", "no 'extra' (the chunk's data)")
                out.append(codec.Entry(chunk, _declared(p, decode_base64(d["extra"], p), chunk.len, "len")))
    else:
        cls = codec.entry_class(magic)
        payload = magic in _PAYLOAD_KINDS
        for i, d in enumerate(entries):
            path = f"entries[{i}]"
            m = _msg(cls, d, path)
            out.append(codec.Entry(m, _extra_from_json(magic, m, d, path) if payload else None))
    return codec.Image(magic, out)
