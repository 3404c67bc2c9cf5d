# SPDX-License-Identifier: MIT
"""A lone VERSION or FEATURE_CHECK answered with a few varints, before the RPC server is imported.

runc (go-criu), crun/podman (libcriu) start one `criu swrk` just to ask the version (and sometimes
the features) before every checkpoint or restore. The server (rpc.py) needs no protobuf either, but
still the generated schema table and the light message classes: these two requests skip even that;
anything else (keep_open, another type, a packet this decoder does not fully understand) is left
unread in the socket for rpc.serve_swrk. tests/test_rpc_units.py checks these bytes against the
protobuf encoding of the same answers.
"""

from __future__ import annotations

from . import CRIU_VERSION
from .images.wire import encode_varint, fields, length_delimited

VERSION, FEATURE_CHECK = 10, 9
_MSG_PEEK = 2
_FEATURES = ("mem_track", "lazy_pages", "pidfd_store")  # criu_features fields 1, 2, 3


def parse_simple(req: bytes) -> tuple[int, dict[str, bool]] | None:
    """(type, features asked) for a VERSION/FEATURE_CHECK request without keep_open, else None."""
    try:
        top = fields(req)
    except ValueError:
        return None
    rtype = None
    asked = dict.fromkeys(_FEATURES, False)
    for num, wt, v in top:
        if num == 1 and wt == 0:
            rtype = v
        elif num == 4 and wt == 0:
            if v:
                return None  # keep_open: the full server serves the rest of the session
        elif num == 5 and wt == 2:
            try:
                for fnum, fwt, fv in fields(v):  # type: ignore[arg-type]
                    if fwt == 0 and 1 <= fnum <= 3:
                        asked[_FEATURES[fnum - 1]] = bool(fv)
            except ValueError:
                return None
    if rtype not in (VERSION, FEATURE_CHECK):
        return None
    return rtype, asked


def feature_answers(asked: dict[str, bool]) -> dict[str, bool]:
    """FEATURE_CHECK: every feature present in the reply, true only if asked for and available.

    mem_track is never available: spice has no soft-dirty tracking (no pre-dump). lazy_pages follows
    the kernel (userfaultfd with non-cooperative events), pidfd_store the kernel's pidfd_getfd."""
    from .check import FEATURES

    return {
        "mem_track": False,
        "lazy_pages": asked["lazy_pages"] and FEATURES["uffd-noncoop"](),
        "pidfd_store": asked["pidfd_store"] and FEATURES["pidfd_store"](),
    }


def version_reply() -> bytes:
    """criu_resp{type=VERSION, success=true, version{major, minor, sublevel}} (no gitid)."""
    major, minor, sub = CRIU_VERSION
    body = b"\x08" + encode_varint(major) + b"\x10" + encode_varint(minor) + b"\x20" + encode_varint(sub)
    return b"\x08" + encode_varint(VERSION) + b"\x10\x01" + length_delimited(10, body)


def feature_reply(answers: dict[str, bool]) -> bytes:
    """criu_resp{type=FEATURE_CHECK, success=true, features{mem_track, lazy_pages, pidfd_store}}."""
    body = b"".join(bytes([(i + 1) << 3, int(answers[n])]) for i, n in enumerate(_FEATURES))
    return b"\x08" + encode_varint(FEATURE_CHECK) + b"\x10\x01" + length_delimited(8, body)


def try_fast(fd: int) -> int | None:
    """Serve the session on fd if its first request is a lone VERSION/FEATURE_CHECK: the exit
    status (0, or 1 if the reply could not be sent). None: not ours, the request is still unread."""
    import _socket

    try:
        sk = _socket.socket(fileno=fd)
    except OSError:
        return None
    try:
        if sk.family != _socket.AF_UNIX or sk.type != _socket.SOCK_SEQPACKET:
            return None
        try:
            data = sk.recv(4096, _MSG_PEEK)
        except OSError:
            return None
        if len(data) >= 4096:
            return None  # possibly truncated: not a lone small request
        got = parse_simple(data)
        if got is None:
            return None
        rtype, asked = got
        reply = version_reply() if rtype == VERSION else feature_reply(feature_answers(asked))
        try:
            sk.recv(4096)
            sk.send(reply)
        except OSError:
            return 1
        return 0
    finally:
        sk.detach()
