# SPDX-License-Identifier: MIT
"""CRIU's image container: [head magic] magic { u32 size, protobuf message, [extra payload] }.

Everything hostile-input-safe: every failure is an ImageError naming the file and the byte offset,
never an IndexError or a protobuf traceback. Messages are re-encoded by protobuf's canonical proto2
encoding, which is what CRIU's protobuf-c writes, so decode -> encode reproduces a file byte for byte.

Loading with `lite=True` decodes into spice_criu.images.lite messages instead (same values, presence
and errors, no protobuf import): what the restore path uses. protobuf itself is imported only when a
protobuf message class is first needed.
"""

from __future__ import annotations

import os
import struct

from ..errors import ImageError
from ..record import Record
from . import magic as M

TYPE_CHECKING = False  # typing and protobuf are not imported at run time
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import Any

    from google.protobuf.message import Message

_U32 = struct.Struct("<I")

# magic -> (pb module, message) of its entries
_ENTRY_TYPES: dict[str, tuple[str, str]] = {
    "INVENTORY": ("inventory_pb2", "inventory_entry"),
    "CORE": ("core_pb2", "core_entry"),
    "IDS": ("core_pb2", "task_kobj_ids_entry"),
    "CREDS": ("creds_pb2", "creds_entry"),
    "UTSNS": ("utsns_pb2", "utsns_entry"),
    "TIMENS": ("timens_pb2", "timens_entry"),
    "PIDNS": ("pidns_pb2", "pidns_entry"),
    "IPC_VAR": ("ipc_var_pb2", "ipc_var_entry"),
    "FS": ("fs_pb2", "fs_entry"),
    "GHOST_FILE": ("ghost_file_pb2", "ghost_file_entry"),
    "MM": ("mm_pb2", "mm_entry"),
    "CGROUP": ("cgroup_pb2", "cgroup_entry"),
    "TCP_STREAM": ("tcp_stream_pb2", "tcp_stream_entry"),
    "STATS": ("stats_pb2", "stats_entry"),
    "PAGEMAP": ("pagemap_pb2", "pagemap_entry"),
    "PSTREE": ("pstree_pb2", "pstree_entry"),
    "REG_FILES": ("regfile_pb2", "reg_file_entry"),
    "NS_FILES": ("ns_pb2", "ns_file_entry"),
    "EVENTFD_FILE": ("eventfd_pb2", "eventfd_file_entry"),
    "EVENTPOLL_FILE": ("eventpoll_pb2", "eventpoll_file_entry"),
    "EVENTPOLL_TFD": ("eventpoll_pb2", "eventpoll_tfd_entry"),
    "SIGNALFD": ("signalfd_pb2", "signalfd_entry"),
    "TIMERFD": ("timerfd_pb2", "timerfd_entry"),
    "INOTIFY_FILE": ("fsnotify_pb2", "inotify_file_entry"),
    "INOTIFY_WD": ("fsnotify_pb2", "inotify_wd_entry"),
    "FANOTIFY_FILE": ("fsnotify_pb2", "fanotify_file_entry"),
    "FANOTIFY_MARK": ("fsnotify_pb2", "fanotify_mark_entry"),
    "VMAS": ("vma_pb2", "vma_entry"),
    "PIPES": ("pipe_pb2", "pipe_entry"),
    "FIFO": ("fifo_pb2", "fifo_entry"),
    "SIGACT": ("sa_pb2", "sa_entry"),
    "NETLINK_SK": ("sk_netlink_pb2", "netlink_sk_entry"),
    "REMAP_FPATH": ("remap_file_path_pb2", "remap_file_path_entry"),
    "MNTS": ("mnt_pb2", "mnt_entry"),
    "TTY_FILES": ("tty_pb2", "tty_file_entry"),
    "TTY_INFO": ("tty_pb2", "tty_info_entry"),
    "TTY_DATA": ("tty_pb2", "tty_data_entry"),
    "RLIMIT": ("rlimit_pb2", "rlimit_entry"),
    "TUNFILE": ("tun_pb2", "tunfile_entry"),
    "EXT_FILES": ("ext_file_pb2", "ext_file_entry"),
    "IRMAP_CACHE": ("fh_pb2", "irmap_cache_entry"),
    "FILE_LOCKS": ("file_lock_pb2", "file_lock_entry"),
    "FDINFO": ("fdinfo_pb2", "fdinfo_entry"),
    "UNIXSK": ("sk_unix_pb2", "unix_sk_entry"),
    "INETSK": ("sk_inet_pb2", "inet_sk_entry"),
    "PACKETSK": ("packet_sock_pb2", "packet_sock_entry"),
    "ITIMERS": ("timer_pb2", "itimer_entry"),
    "POSIX_TIMERS": ("timer_pb2", "posix_timer_entry"),
    "NETDEV": ("netdev_pb2", "net_device_entry"),
    "PIPES_DATA": ("pipe_data_pb2", "pipe_data_entry"),
    "FIFO_DATA": ("pipe_data_pb2", "pipe_data_entry"),
    "SK_QUEUES": ("sk_packet_pb2", "sk_packet_entry"),
    "IPCNS_SHM": ("ipc_shm_pb2", "ipc_shm_entry"),
    "IPCNS_SEM": ("ipc_sem_pb2", "ipc_sem_entry"),
    "IPCNS_MSG": ("ipc_msg_pb2", "ipc_msg_entry"),
    "NETNS": ("netdev_pb2", "netns_entry"),
    "USERNS": ("userns_pb2", "userns_entry"),
    "SECCOMP": ("seccomp_pb2", "seccomp_entry"),
    "AUTOFS": ("autofs_pb2", "autofs_entry"),
    "FILES": ("fdinfo_pb2", "file_entry"),
    "CPUINFO": ("cpuinfo_pb2", "cpuinfo_entry"),
    "MEMFD_INODE": ("memfd_pb2", "memfd_inode_entry"),
    "BPFMAP_FILE": ("bpfmap_file_pb2", "bpfmap_file_entry"),
    "BPFMAP_DATA": ("bpfmap_data_pb2", "bpfmap_data_entry"),
    "APPARMOR": ("apparmor_pb2", "apparmor_entry"),
    "SIGNAL": ("siginfo_pb2", "siginfo_entry"),
    "PIDFD": ("pidfd_pb2", "pidfd_entry"),
    "BINFMT_MISC": ("binfmt_misc_pb2", "binfmt_misc_entry"),
}

_classes: dict[tuple[str, str], type[Message]] = {}
#: message name -> its pb module, for every message an image holds
_MODULES: dict[str, str] = {}


def message_class(module: str, name: str, lite: bool = False) -> type[Message]:
    """A generated message class, importing its module on first use (keeps start-up fast).

    lite: the spice_criu.images.lite class instead (same interface and bytes, no protobuf import)."""
    if lite:
        return _lite().message_class(name)
    key = (module, name)
    cls = _classes.get(key)
    if cls is None:  # protobuf's classes: the lite path above never needs importlib (nor its warnings)
        import importlib

        mod = importlib.import_module(f"{__package__}.pb.{module}")
        cls = _classes[key] = getattr(mod, name)
    return cls


def has_entries(magic: str) -> bool:
    """Whether images of this magic hold protobuf entries spice can decode."""
    return magic in _ENTRY_TYPES


#: what a restore reads: loading these schemas is start-up (CRIU has them compiled in), not restore
RESTORE_MAGICS = ("INVENTORY", "PSTREE", "CORE", "IDS", "MM", "PAGEMAP", "FDINFO", "FILES", "FS", "SECCOMP",
                  "MEMFD_INODE", "REMAP_FPATH", "PIPES_DATA", "FIFO_DATA", "SK_QUEUES", "TCP_STREAM", "STATS")


def preload(magics: tuple[str, ...] = RESTORE_MAGICS, lite: bool = False) -> None:
    """Import the generated schemas of these image kinds now (lite: only build the light classes)."""
    for m in magics:
        if lite:
            _lite().message_class(entry_name(m))
        else:
            entry_class(m)


def entry_name(magic: str) -> str:
    """The CRIU message name of an image kind's entries, e.g. "core_entry" for CORE."""
    return _ENTRY_TYPES[magic][1]


def entry_class(magic: str, lite: bool = False) -> type[Message]:
    return message_class(*_ENTRY_TYPES[magic], lite=lite)


def pb(name: str, lite: bool = False) -> type[Message]:
    """Look a message class up by CRIU message name, e.g. pb("vma_entry") (lite: see message_class)."""
    if lite:
        return _lite().message_class(name)
    if not _MODULES:
        for mod, msg in (*_ENTRY_TYPES.values(), *_EXTRA_MESSAGES.values()):
            _MODULES.setdefault(msg, mod)
    return message_class(_MODULES[name], name)


_EXTRA_MESSAGES = {
    "pagemap_head": ("pagemap_pb2", "pagemap_head"),
    "ghost_chunk_entry": ("ghost_file_pb2", "ghost_chunk_entry"),
    "ipc_msg": ("ipc_msg_pb2", "ipc_msg"),
}


_lite_module = None


def _lite():
    """spice_criu.images.lite, imported on first use."""
    global _lite_module
    if _lite_module is None:
        from . import lite

        _lite_module = lite
    return _lite_module


class Entry(Record):
    """One message of an image plus the raw payload some kinds carry after it."""

    msg: Message
    extra: Any = None

    def __init__(self, msg: Message, extra: Any = None) -> None:  # one per message read: keep it cheap
        self.msg = msg
        self.extra = extra


class Image(Record):
    magic: str
    entries: list[Entry]

    @property
    def messages(self) -> list[Message]:
        return [e.msg for e in self.entries]


def _round_up(x: int, y: int) -> int:
    return (x + y - 1) // y * y


class _Reader:
    """Cursor over an image's bytes; every read is bounds-checked into an ImageError."""

    def __init__(self, data: bytes, path: object, lite: bool = False) -> None:
        self.raw = bytes(data)
        self.data = memoryview(self.raw)
        self.pos = 0
        self.path = path
        self.lite = lite

    def error(self, msg: str, offset: int | None = None) -> ImageError:
        return ImageError(self.path, msg, self.pos if offset is None else offset)

    @property
    def left(self) -> int:
        return len(self.data) - self.pos

    def u32(self, what: str) -> int:
        if self.left < 4:
            raise self.error(f"truncated: {what} needs 4 bytes, {self.left} left")
        (v,) = _U32.unpack_from(self.data, self.pos)
        self.pos += 4
        return v

    def take(self, n: int, what: str) -> bytes:
        if n > self.left:
            raise self.error(f"truncated: {what} needs {n} bytes, {self.left} left")
        b = bytes(self.data[self.pos : self.pos + n])
        self.pos += n
        return b

    def message(self, name: str) -> Message:
        """The next entry (u32 size + message `name`)."""
        start = self.pos
        size = self.u32("entry size")
        if size > self.left:
            raise self.error(f"entry size {size} exceeds the {self.left} bytes left in the file", start)
        if self.lite:
            lite = _lite()
            try:
                msg = lite.decode(name, self.raw, self.pos, self.pos + size)
            except lite.DecodeError as e:
                raise self.error(f"bad {name} message: {e}", start) from None
        else:
            from google.protobuf.message import DecodeError

            msg = pb(name)()
            try:
                msg.ParseFromString(self.data[self.pos : self.pos + size])
            except (DecodeError, RuntimeError, ValueError) as e:
                raise self.error(f"bad {name} message: {e}", start) from None
        self.pos += size
        return msg


def _read_plain(r: _Reader, magic: str, extra: Callable[[_Reader, Message], Any] | None) -> list[Entry]:
    name = entry_name(magic)
    out = []
    while r.left:
        msg = r.message(name)
        out.append(Entry(msg, extra(r, msg) if extra else None))
    return out


def _read_pagemap(r: _Reader) -> list[Entry]:
    if not r.left:
        raise r.error("pagemap image has no pagemap_head")
    out = [Entry(r.message("pagemap_head"))]
    while r.left:
        out.append(Entry(r.message("pagemap_entry")))
    return out


def _read_ghost(r: _Reader) -> list[Entry]:
    if not r.left:
        raise r.error("ghost file image has no ghost_file_entry")
    head = r.message("ghost_file_entry")
    if not head.chunks:
        return [Entry(head, r.take(r.left, "ghost file data"))]
    out = [Entry(head)]
    while r.left:
        chunk = r.message("ghost_chunk_entry")
        out.append(Entry(chunk, r.take(chunk.len, "ghost chunk data")))
    return out


def _ipc_msgs(r: _Reader, m: Message) -> list[tuple[Message, bytes]]:
    out = []
    for _ in range(m.qnum):
        msg = r.message("ipc_msg")
        data = r.take(_round_up(msg.msize, 8), "ipc message data")
        out.append((msg, data[: msg.msize]))
    return out


def _ipc_sem(r: _Reader, m: Message) -> list[int]:
    raw = r.take(_round_up(2 * m.nsems, 8), "semaphore values")
    return list(struct.unpack_from(f"<{m.nsems}H", raw))


_EXTRA_READERS: dict[str, Callable[[_Reader, Message], Any]] = {
    "PIPES_DATA": lambda r, m: r.take(m.bytes, "pipe data"),
    "FIFO_DATA": lambda r, m: r.take(m.bytes, "fifo data"),
    "SK_QUEUES": lambda r, m: r.take(m.length, "socket queue packet"),
    "TCP_STREAM": lambda r, m: (r.take(m.inq_len, "tcp in-queue"), r.take(m.outq_len, "tcp out-queue")),
    "BPFMAP_DATA": lambda r, m: r.take(m.keys_bytes + m.values_bytes, "bpf map data"),
    # CRIU >= 3.x keeps shm contents in pagemap-shmem images (in_pagemaps); older ones inline
    "IPCNS_SHM": lambda r, m: b"" if m.in_pagemaps else r.take(_round_up(m.size, 4), "shm contents")[: m.size],
    "IPCNS_SEM": _ipc_sem,
    "IPCNS_MSG": _ipc_msgs,
}


def read_magic(r: _Reader) -> str:
    first = r.u32("magic")
    value = r.u32("magic") if first in (M.IMG_COMMON, M.IMG_SERVICE) else first
    name = M.BY_VALUE.get(value)
    if name is None or name == "KDAT":
        raise r.error(f"unknown magic 0x{value:08x} (not a CRIU image, or a raw one like pages-*.img)",
                      r.pos - 4)
    if name not in _ENTRY_TYPES:
        raise r.error(f"no decoder for {name} images", r.pos - 4)
    if name == "INVENTORY" and first != value:
        raise r.error("inventory.img must not have a head magic", 0)
    if name != "INVENTORY" and first == value:
        raise r.error(f"{name} image lacks its head magic", 0)
    if first != value and first != M.head_magic(name):
        raise r.error(f"{name} image has the wrong head magic 0x{first:08x}", 0)
    return name


def loads(data: bytes, path: object = "<bytes>", expect: str | None = None, lite: bool = False) -> Image:
    """Decode a whole image from bytes; `expect` is the magic its file name calls for.

    lite: decode into spice_criu.images.lite messages (read-only use; no protobuf import)."""
    r = _Reader(data, path, lite)
    name = read_magic(r)
    if expect is not None and expect != name:
        raise ImageError(path, f"wrong magic: found {name}, expected {expect}", 0)
    if name == "PAGEMAP":
        entries = _read_pagemap(r)
    elif name == "GHOST_FILE":
        entries = _read_ghost(r)
    else:
        entries = _read_plain(r, name, _EXTRA_READERS.get(name))
    return Image(name, entries)


def load(path: str | os.PathLike, expect: str | None = None, lite: bool = False) -> Image:
    """Decode the image at `path`. Errors (missing, unreadable, corrupt) name the file."""
    p = path
    try:
        with open(p, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise ImageError(p, "no such image file") from None
    except OSError as e:
        raise ImageError(p, f"cannot read: {e.strerror}") from None
    if expect is None:
        named = M.magic_for_filename(os.path.basename(p))
        expect = named if named not in (None, "RAW") else None
    return loads(data, p, expect, lite)


def count(data: bytes, path: object = "<bytes>") -> tuple[str, int]:
    """(magic, number of top-level entries), as `crit info` reports."""
    img = loads(data, path)
    n = len(img.entries)
    return img.magic, n - 1 if img.magic == "PAGEMAP" else n


# ---------------------------------------------------------------- writing


def _pack(msg: Message) -> bytes:
    body = msg.SerializeToString()
    return _U32.pack(len(body)) + body


def _write_extra(magic: str, e: Entry) -> bytes:
    x = e.extra
    if x is None:
        return b""
    if magic in ("PIPES_DATA", "FIFO_DATA", "SK_QUEUES", "BPFMAP_DATA", "GHOST_FILE"):
        return bytes(x)
    if magic == "TCP_STREAM":
        return bytes(x[0]) + bytes(x[1])
    if magic == "IPCNS_SHM":
        return bytes(x).ljust(_round_up(len(x), 4), b"\0")
    if magic == "IPCNS_SEM":
        raw = struct.pack(f"<{len(x)}H", *x)
        return raw.ljust(_round_up(len(raw), 8), b"\0")
    if magic == "IPCNS_MSG":
        out = b""
        for msg, data in x:
            out += _pack(msg) + bytes(data).ljust(_round_up(msg.msize, 8), b"\0")
        return out
    raise ValueError(f"{magic} entries carry no extra payload")


def dumps(image: Image) -> bytes:
    """Encode an image exactly as CRIU lays it out."""
    head = M.head_magic(image.magic)
    out = [] if head is None else [_U32.pack(head)]
    out.append(_U32.pack(M.MAGICS[image.magic]))
    for e in image.entries:
        out.append(_pack(e.msg))
        out.append(_write_extra(image.magic, e))
    return b"".join(out)


def make(magic: str, messages: Iterable[Message], extras: Iterable[Any] | None = None) -> Image:
    msgs = list(messages)
    xs = list(extras) if extras is not None else [None] * len(msgs)
    return Image(magic, [Entry(m, x) for m, x in zip(msgs, xs, strict=True)])


def dump(path: str | os.PathLike, image: Image) -> None:
    data = dumps(image)
    with open(path, "wb") as f:
        f.write(data)
