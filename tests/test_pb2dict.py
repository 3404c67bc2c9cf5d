# SPDX-License-Identifier: MIT
"""pb2dict: crit's JSON rules, field kind by field kind, and the way back.

Expected values follow crit 4.2.1 (lib/pycriu/images/pb2dict.py); compat-tests/test_crit_compat.py
checks the same against the real crit on real and crafted images. `random_message` and `fill_required`
are also used by the compat tests and the fuzz test.
"""

from __future__ import annotations

import base64
import json
import os
import random
import struct

import pytest
from google.protobuf.descriptor import FieldDescriptor as FD
from google.protobuf.message import Message

from spice_criu.images import codec
from spice_criu.images import pb2dict as P
from spice_criu.images.pb.criu_opts import CRIU_OPTS

# ------------------------------------------------------------------ message builders (shared)

_RANGES = {
    FD.TYPE_UINT32: (0, 2**32 - 1), FD.TYPE_FIXED32: (0, 2**32 - 1),
    FD.TYPE_UINT64: (0, 2**64 - 1), FD.TYPE_FIXED64: (0, 2**64 - 1),
    FD.TYPE_INT32: (-(2**31), 2**31 - 1), FD.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FD.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FD.TYPE_INT64: (-(2**63), 2**63 - 1), FD.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FD.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
}  # fmt: skip


def fill_required(msg: Message) -> Message:
    """Set every unset required field (recursively) to its zero value, as CRIU would write it."""
    for f in msg.DESCRIPTOR.fields:
        if f.type == FD.TYPE_MESSAGE:
            if f.is_repeated:
                for sub in getattr(msg, f.name):
                    fill_required(sub)
            elif f.is_required or msg.HasField(f.name):
                fill_required(getattr(msg, f.name))
                getattr(msg, f.name).SetInParent()
        elif not f.is_required or msg.HasField(f.name):
            continue
        elif f.type == FD.TYPE_ENUM:
            setattr(msg, f.name, f.enum_type.values[0].number)
        else:
            setattr(msg, f.name, {FD.TYPE_STRING: "", FD.TYPE_BYTES: b"", FD.TYPE_BOOL: False}.get(f.type, 0))
    return msg


def _int(rng: random.Random, t: int, nonneg: bool) -> int:
    lo, hi = _RANGES[t]
    if nonneg:
        lo = 0
    r = rng.random()
    if r < 0.15:
        return rng.choice([lo, hi, 0, 1])
    if r < 0.5:
        return rng.randint(max(lo, -1000), min(hi, 1000))
    return rng.randint(lo, hi)


def random_message(cls: type[Message], rng: random.Random, depth: int = 0, hexed: bool = False,
                   optional_p: float = 0.6) -> Message:
    """A message with random values in every required and most optional fields.

    Values stay inside what crit can round-trip: ipadd lists of 1 or 4 words, no CR in
    quoted-printable unix names, no negative numbers under (criu).hex (crit prints "0x-5" and cannot
    read it back).
    """
    msg = cls()
    desc = cls.DESCRIPTOR
    for f in desc.fields:
        opts = CRIU_OPTS.get(f"{desc.name}.{f.name}", {})
        if not f.is_required and rng.random() > optional_p:
            continue
        if f.type == FD.TYPE_MESSAGE and depth > 6:
            if f.is_required:
                fill_required(getattr(msg, f.name))
                getattr(msg, f.name).SetInParent()
            continue
        sub_hex = hexed or bool(opts.get("hex"))
        if f.is_repeated:
            n = rng.choice([1, 4]) if opts.get("ipadd") else rng.choice([0, 1, 2, 3])
            box = getattr(msg, f.name)
            for _ in range(n):
                if f.type == FD.TYPE_MESSAGE:
                    box.add().CopyFrom(random_message(f.message_type._concrete_class, rng, depth + 1, sub_hex))
                else:
                    box.append(_value(f, opts, rng, sub_hex))
        elif f.type == FD.TYPE_MESSAGE:
            getattr(msg, f.name).CopyFrom(random_message(f.message_type._concrete_class, rng, depth + 1, sub_hex))
        else:
            setattr(msg, f.name, _value(f, opts, rng, sub_hex))
    return msg


def _value(f, opts: dict, rng: random.Random, hexed: bool):
    t = f.type
    if t == FD.TYPE_BOOL:
        return rng.random() < 0.5
    if t == FD.TYPE_ENUM:
        return rng.choice(f.enum_type.values).number
    if t == FD.TYPE_STRING:
        return "".join(rng.choice("abcxyz/._- é✓\t\"\\") for _ in range(rng.randint(0, 40)))
    if t == FD.TYPE_BYTES:
        data = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 150)))
        return data.replace(b"\r", b"") if opts.get("conv") else data
    if opts.get("dev"):
        return rng.getrandbits(32)
    return _int(rng, t, nonneg=hexed)


def msg(_type: str, **kw) -> Message:
    m = codec.pb(_type)()
    for k, v in kw.items():
        if isinstance(v, list):
            getattr(m, k).extend(v)
        else:
            setattr(m, k, v)
    return fill_required(m)


def ntohl(x: int) -> int:
    return struct.unpack("<I", struct.pack(">I", x))[0]


# ------------------------------------------------------------------ message -> dict


def test_fields_in_number_order_only_present_enums_by_name():
    p = msg("pstree_entry", pid=7, ppid=1, pgid=7, sid=7, threads=[7, 8])
    d = P.pb2dict(p)
    assert list(d) == ["pid", "ppid", "pgid", "sid", "threads"]
    assert d["threads"] == [7, 8] and isinstance(d["threads"], list)
    assert "threads" not in P.pb2dict(msg("pstree_entry", pid=1))
    f = msg("fdinfo_entry", id=3, type=5, fd=4)
    assert P.pb2dict(f) == {"id": 3, "flags": 0, "type": "UNIXSK", "fd": 4}


def test_hex_only_when_pretty_and_64bit_values():
    v = msg("vma_entry", start=0x7FFF0000, end=2**64 - 4096, pgoff=5, madv=2**63, fd=-1)
    plain, pretty = P.pb2dict(v), P.pb2dict(v, pretty=True)
    assert plain["start"] == 0x7FFF0000 and plain["end"] == 2**64 - 4096 and plain["fd"] == -1
    assert pretty["start"] == "0x7fff0000" and pretty["end"] == "0xfffffffffffff000"
    assert pretty["madv"] == "0x8000000000000000" and pretty["pgoff"] == 5 and pretty["fd"] == -1


def test_hex_is_inherited_by_every_int_below_a_hex_message_field():
    core = codec.entry_class("CORE")()
    core.mtype = 1
    ti = core.thread_info
    fill_required(ti)
    ti.clear_tid_addr = 0x1000
    ti.gpregs.ip = 0x401000
    ti.gpregs.mode = 1
    ti.fpregs.mxcsr = 0x1F80
    d = P.pb2dict(core, pretty=True)["thread_info"]
    assert d["clear_tid_addr"] == "0x1000"
    assert d["gpregs"]["ip"] == "0x401000" and d["gpregs"]["r15"] == "0x0"
    assert d["gpregs"]["mode"] == "NATIVE"  # enums stay names
    assert d["fpregs"]["mxcsr"] == 0x1F80  # a sibling message is not hex
    assert P.pb2dict(core)["thread_info"]["gpregs"]["ip"] == 0x401000


def test_flags_maps_with_leftover_bits():
    v = msg("vma_entry", prot=7, flags=0x22 | 0x4000, status=(1 << 0) | (1 << 9) | (1 << 20))
    d = P.pb2dict(v, pretty=True)
    assert d["prot"] == "PROT_READ | PROT_WRITE | PROT_EXEC"
    assert d["flags"] == "MAP_PRIVATE | MAP_ANON | 0x4000"
    assert d["status"] == "VMA_AREA_REGULAR | VMA_ANON_PRIVATE | 0x100000"
    assert P.pb2dict(msg("vma_entry"), pretty=True)["prot"] == ""
    r = msg("reg_file_entry", flags=0o1 | 0o2000 | 0o2000000 | 0o100000)
    assert P.pb2dict(r, pretty=True)["flags"] == "O_WRONLY | O_APPEND | O_LARGEFILE | O_CLOEXEC"
    pm = msg("pagemap_entry", vaddr=0x400000, flags=6)
    assert P.pb2dict(pm, pretty=True) == {"vaddr": "0x400000", "compat_nr_pages": 0, "flags": "PE_LAZY | PE_PRESENT"}
    seals = msg("memfd_inode_entry", seals=0x1F | 0x20)
    assert P.pb2dict(seals, pretty=True)["seals"] == (
        "F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_FUTURE_WRITE | 0x20")
    for text, want in [("", 0), ("PROT_READ|PROT_EXEC", 5), (" PROT_WRITE | 0x10 | 8 ", 0x1A)]:
        assert P.unmap_flags(text, P.FLAGS_MAPS["mmap.prot"]) == want


def test_dict_maps_by_field_name_unknown_values_stay_numbers():
    isk = msg("inet_sk_entry", family=10, type=2, proto=17, state=7)
    d = P.pb2dict(isk, pretty=True)
    assert (d["family"], d["type"], d["proto"], d["state"]) == ("INET6", "DGRAM", "UDP", "CLOSE")
    assert P.pb2dict(msg("inet_sk_entry", family=99), pretty=True)["family"] == 99
    tc = codec.pb("core_entry")().tc
    fill_required(tc)
    for state, shown in [(1, "Alive"), (3, "Zombie"), (6, "Stopped"), (2, 2)]:
        tc.task_state = state
        assert P.pb2dict(tc, pretty=True)["task_state"] == shown
        assert P.dict2pb(P.pb2dict(tc, pretty=True), type(tc)()).task_state == state


def test_dev_and_odev():
    g = msg("ghost_file_entry", dev=(253 << 20) | 7, rdev=os.makedev(136, 300))
    d = P.pb2dict(g, pretty=True)
    assert d["dev"] == "253:7" and d["rdev"] == "136:300"
    assert P.pb2dict(g)["dev"] == (253 << 20) | 7
    back = P.dict2pb(d, codec.pb("ghost_file_entry")())
    assert (back.dev, back.rdev) == (g.dev, g.rdev)


def test_ipadd_v4_v6_and_odd_word_counts():
    isk = msg("inet_sk_entry", src_addr=[ntohl(0x7F000001)], dst_addr=[0, 0, 0, ntohl(1)])
    d = P.pb2dict(isk, pretty=True)
    assert d["src_addr"] == ["127.0.0.1"] and d["dst_addr"] == ["::1"]
    assert P.pb2dict(isk)["src_addr"] == [ntohl(0x7F000001)]
    back = P.dict2pb(d, codec.pb("inet_sk_entry")())
    assert list(back.src_addr) == list(isk.src_addr) and list(back.dst_addr) == list(isk.dst_addr)
    v6 = P.dict2pb({"src_addr": ["fe80::1:2"]}, codec.pb("inet_sk_entry")())
    assert P.pb2dict(v6, pretty=True)["src_addr"] == ["fe80::1:2"]
    odd = msg("inet_sk_entry", src_addr=[1, 2])  # crit crashes here; spice shows the numbers
    assert P.pb2dict(odd, pretty=True)["src_addr"] == [1, 2]


def test_unix_names_are_quoted_printable_pretty_or_not():
    u = msg("unix_sk_entry", name=b"\0spice-abstract")
    assert P.pb2dict(u)["name"] == "=00spice-abstract" == P.pb2dict(u, pretty=True)["name"]
    long = b"/tmp/" + b"x" * 100 + b"\xff"
    shown = P.pb2dict(msg("unix_sk_entry", name=long))["name"]
    assert "=\n" in shown and shown.endswith("=FF")  # soft line breaks, as quopri writes them
    assert P.dict2pb({"name": shown}, codec.pb("unix_sk_entry")()).name == long


def test_bytes_are_base64_with_encodebytes_lines():
    data = bytes(range(256)) * 2
    s = msg("siginfo_entry", siginfo=data)
    d = P.pb2dict(s)
    assert d["siginfo"] == base64.encodebytes(data).decode()
    assert d["siginfo"].count("\n") == len(d["siginfo"]) // 77 + (len(d["siginfo"]) % 77 > 0)
    assert P.pb2dict(msg("siginfo_entry"))["siginfo"] == ""
    assert P.dict2pb(d, codec.pb("siginfo_entry")()).siginfo == data


def test_negative_and_signed_values():
    tc = codec.pb("core_entry")().tc
    fill_required(tc)
    tc.oom_score_adj = -1000
    assert P.pb2dict(tc, pretty=True)["oom_score_adj"] == -1000
    u = msg("unix_sk_entry", mnt_id=-1)
    assert P.pb2dict(u)["mnt_id"] == -1
    assert P.dict2pb({"mnt_id": "-0x10"}, codec.pb("unix_sk_entry")()).mnt_id == -16
    assert P.dict2pb({"mnt_id": "0x-10"}, codec.pb("unix_sk_entry")()).mnt_id == -16


def test_invalid_utf8_string_survives_the_round_trip():
    r = codec.pb("reg_file_entry")()
    r.MergeFromString(b"\x32\x04/\xff\xfeA")  # name = b"/\xff\xfeA", not UTF-8
    fill_required(r)
    d = P.pb2dict(r)
    assert d["name"] == "/\udcff\udcfeA"
    text = json.dumps(d)
    back = P.dict2pb(json.loads(text), codec.pb("reg_file_entry")())
    assert back.SerializeToString() == r.SerializeToString()


def test_dict2pb_takes_what_crit_takes():
    cls = codec.pb("vma_entry")
    m = P.dict2pb({"start": "0x1000", "end": "8192", "pgoff": 3, "prot": "PROT_READ | 0x4",
                   "flags": 34, "status": "VMA_AREA_REGULAR", "fd": -1, "shmid": 0, "bogus": 1}, cls())
    assert (m.start, m.end, m.pgoff, m.prot, m.flags, m.status, m.fd) == (0x1000, 8192, 3, 5, 34, 1, -1)
    f = P.dict2pb({"id": 1, "flags": 0, "type": 1, "fd": 0}, codec.pb("fdinfo_entry")())  # enum number
    assert f.type == 1
    isk = P.dict2pb({"family": "INET", "state": "10", "proto": 6}, codec.pb("inet_sk_entry")())
    assert (isk.family, isk.state, isk.proto) == (2, 10, 6)
    assert P.dict2pb({"threads": []}, codec.pb("pstree_entry")()).threads == []  # crit: IndexError


@pytest.mark.parametrize(
    "d, where, what",
    [
        ({"start": "zzz"}, "start", "not a valid integer"),
        ({"start": -1}, "start", "does not fit"),
        ({"prot": 2**32}, "prot", "does not fit"),
        ({"prot": "PROT_FLY"}, "prot", "not a valid integer"),
        ({"start": None}, "start", "not a valid integer"),
    ],
)
def test_dict2pb_errors_name_the_field(d, where, what):
    with pytest.raises(P.JsonError) as e:
        P.dict2pb(d, codec.pb("vma_entry")())
    assert e.value.path == where and what in str(e.value)


def test_dict2pb_errors_in_nested_and_repeated_fields():
    cases = [
        ({"mtype": "ARM64"}, "mtype", "not a march value"),
        ({"thread_info": {"gpregs": {"ip": "0xgg"}}}, "thread_info.gpregs.ip", "not a valid integer"),
        ({"thread_info": {"tls": [{}, {"limit": []}]}}, "thread_info.tls[1].limit", "not a valid integer"),
        ({"thread_info": []}, "thread_info", "expected an object"),
        ({"tc": {"sigactions": {}}}, "tc.sigactions", "expected a list"),
        ({"thread_core": {"signals_p": {"signals": [{"siginfo": "!!!a"}]}}},
         "thread_core.signals_p.signals[0].siginfo", "bad base64"),
    ]  # fmt: skip
    for d, where, what in cases:
        with pytest.raises(P.JsonError) as e:
            P.dict2pb(d, codec.entry_class("CORE")())
        assert e.value.path == where and what in str(e.value), (d, str(e.value))


def test_random_messages_round_trip_pretty_and_plain():
    rng = random.Random(1234)
    for magic in sorted(codec._ENTRY_TYPES):
        cls = codec.entry_class(magic)
        for _ in range(6):
            m = random_message(cls, rng)
            for pretty in (False, True):
                text = json.dumps(P.pb2dict(m, pretty), indent=4 if pretty else None)
                back = P.dict2pb(json.loads(text), cls())
                assert back.SerializeToString() == m.SerializeToString(), (magic, pretty, text[:300])


# ------------------------------------------------------------------ whole images and payloads


def _image(magic: str, *entries: tuple[Message, object]) -> codec.Image:
    return codec.Image(magic, [codec.Entry(m, x) for m, x in entries])


def _payload_images() -> dict[str, codec.Image]:
    ipc = msg("ipc_msg_entry", qnum=2)
    return {
        "PIPES_DATA": _image("PIPES_DATA", (msg("pipe_data_entry", pipe_id=5, bytes=3), b"abc"),
                             (msg("pipe_data_entry", pipe_id=6, bytes=0), b"")),
        "FIFO_DATA": _image("FIFO_DATA", (msg("pipe_data_entry", pipe_id=9, bytes=100), bytes(100))),
        "SK_QUEUES": _image("SK_QUEUES", (msg("sk_packet_entry", id_for=3, length=2048), os.urandom(2048))),
        "TCP_STREAM": _image("TCP_STREAM", (msg("tcp_stream_entry", inq_len=2, outq_len=3), (b"in", b"out"))),
        "BPFMAP_DATA": _image("BPFMAP_DATA", (msg("bpfmap_data_entry", keys_bytes=4, values_bytes=8), bytes(12))),
        "IPCNS_SHM": _image("IPCNS_SHM", (msg("ipc_shm_entry", size=5), b"hello"),
                            (msg("ipc_shm_entry", size=10001, in_pagemaps=True), b"")),
        "IPCNS_SEM": _image("IPCNS_SEM", (msg("ipc_sem_entry", nsems=3), [1, 2, 65535])),
        "IPCNS_MSG": _image("IPCNS_MSG", (ipc, [(msg("ipc_msg", mtype=1, msize=5), b"hello"),
                                               (msg("ipc_msg", mtype=2, msize=0), b"")])),
    }  # fmt: skip


def test_payload_json_forms():
    imgs = _payload_images()
    d = {k: P.image_to_dict(codec.loads(codec.dumps(v)))["entries"] for k, v in imgs.items()}
    assert d["PIPES_DATA"][0]["extra"] == "YWJj\n" and d["PIPES_DATA"][1]["extra"] == ""
    assert d["TCP_STREAM"][0]["extra"] == {"inq": "aW4=\n", "outq": "b3V0\n"}
    assert d["IPCNS_SEM"][0]["extra"] == [1, 2, 65535]
    assert d["IPCNS_MSG"][0]["extra"] == [{"mtype": 1, "msize": 5}, "aGVsbG8=\n", {"mtype": 2, "msize": 0}, ""]
    assert d["IPCNS_SHM"][0]["extra"] == "aGVsbG8=\n" and d["IPCNS_SHM"][1]["extra"] == ""
    assert list(d["SK_QUEUES"][0]) == ["id_for", "length", "extra"]


def test_payload_images_round_trip_through_json():
    for magic, img in _payload_images().items():
        raw = codec.dumps(img)
        for pretty in (False, True):
            text = json.dumps(P.image_to_dict(codec.loads(raw), pretty))
            assert codec.dumps(P.dict_to_image(json.loads(text))) == raw, magic


def test_no_payload_sizes():
    want = {"PIPES_DATA": ["... <3B>", "... <0B>"], "FIFO_DATA": ["... <100B>"], "SK_QUEUES": ["... <2KB>"],
            "TCP_STREAM": ["... <5B>"], "BPFMAP_DATA": ["... <12B>"], "IPCNS_SHM": ["... <5B>", "... <9.8KB>"],
            "IPCNS_SEM": ["... <6B>"], "IPCNS_MSG": [f"... <{4 + 5 + 4 + 0}B>"]}
    for magic, img in _payload_images().items():
        d = P.image_to_dict(img, pretty=True, no_payload=True)
        assert [e["extra"] for e in d["entries"]] == want[magic], magic
    assert [P.human_readable(n) for n in (0, 1023, 1024, 1536, 10 * 2**20, 2**90)] == [
        "0B", "1023B", "1KB", "1.5KB", "10MB", "1024.0YB"]


def test_ghost_file_plain_and_chunked():
    plain = _image("GHOST_FILE", (msg("ghost_file_entry", mode=0o100644, size=4), b"data"))
    d = P.image_to_dict(plain)
    assert d["entries"][0]["extra"] == "ZGF0YQ==\n"
    assert "extra" not in P.image_to_dict(plain, no_payload=True)["entries"][0]
    chunked = _image("GHOST_FILE", (msg("ghost_file_entry", chunks=True), None),
                     (msg("ghost_chunk_entry", len=2, off=0), b"ab"), (msg("ghost_chunk_entry", len=1, off=8), b"z"))
    d = P.image_to_dict(chunked, pretty=True)
    assert [list(e) for e in d["entries"]] == [["uid", "gid", "mode", "chunks"], ["len", "off", "extra"],
                                               ["len", "off", "extra"]]
    assert d["entries"][2]["extra"] == "eg==\n"
    for img in (plain, chunked):
        raw = codec.dumps(img)
        assert codec.dumps(P.dict_to_image(json.loads(json.dumps(P.image_to_dict(codec.loads(raw)))))) == raw


def test_pagemap_json_has_head_then_entries():
    pm = _image("PAGEMAP", (msg("pagemap_head", pages_id=1), None),
                (msg("pagemap_entry", vaddr=0x1000, flags=4, nr_pages=2), None))
    d = P.image_to_dict(pm, pretty=True)
    assert d == {"magic": "PAGEMAP", "entries": [
        {"pages_id": 1}, {"vaddr": "0x1000", "compat_nr_pages": 0, "flags": "PE_PRESENT", "nr_pages": 2}]}
    assert codec.dumps(P.dict_to_image(d)) == codec.dumps(pm)


@pytest.mark.parametrize(
    "obj, where, what",
    [
        ([], "", "expected an object"),
        ({"magic": "NOPE", "entries": []}, "magic", "unknown image magic"),
        ({"magic": "PSTREE", "entries": {}}, "entries", "expected a list"),
        ({"magic": "PSTREE", "entries": [{"pid": 1}]}, "entries[0]", "lacks required field(s): ppid, pgid, sid"),
        ({"magic": "PIPES_DATA", "entries": [{"pipe_id": 1, "bytes": 4, "extra": "YWJj\n"}]},
         "entries[0].extra", "extra holds 3 bytes but bytes says 4"),
        ({"magic": "PIPES_DATA", "entries": [{"pipe_id": 1, "bytes": 4, "extra": "... <4B>"}]},
         "entries[0].extra", "decoded with --nopl"),
        ({"magic": "TCP_STREAM", "entries": [dict(P.pb2dict(msg("tcp_stream_entry", inq_len=1)), extra="x")]},
         "entries[0].extra", "expected {"),
        ({"magic": "IPCNS_SEM", "entries": [dict(P.pb2dict(msg("ipc_sem_entry", nsems=2)), extra=[1])]},
         "entries[0].extra", "1 semaphore values but nsems says 2"),
        ({"magic": "IPCNS_SEM", "entries": [dict(P.pb2dict(msg("ipc_sem_entry", nsems=1)), extra=[70000])]},
         "entries[0].extra[0]", "not a u16"),
        ({"magic": "IPCNS_MSG", "entries": [dict(P.pb2dict(msg("ipc_msg_entry", qnum=1)), extra=[])]},
         "entries[0].extra", "0 messages but qnum says 1"),
        ({"magic": "IPCNS_SHM", "entries": [dict(P.pb2dict(msg("ipc_shm_entry", size=9)), extra="YWJj\n")]},
         "entries[0].extra", "extra holds 3 bytes but size says 9"),
        ({"magic": "GHOST_FILE", "entries": []}, "entries", "needs its ghost_file_entry"),
        ({"magic": "GHOST_FILE", "entries": [P.pb2dict(msg("ghost_file_entry"))]}, "entries[0]", "no 'extra'"),
    ],
)
def test_dict_to_image_errors(obj, where, what):
    with pytest.raises(P.JsonError) as e:
        P.dict_to_image(obj)
    assert e.value.path == where and what in str(e.value), str(e.value)
