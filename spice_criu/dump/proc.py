# SPDX-License-Identifier: MIT
"""/proc readers for a frozen task: stat, status, smaps, fdinfo, children.

Everything a task can report about itself through /proc is read here, once, with the exact
parsing CRIU's proc_parse.c does, so the images carry the same values real CRIU writes.
"""

from __future__ import annotations

import os

from ..errors import SpiceError


def read_text(path: str, what: str) -> str:
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "surrogateescape")
    except FileNotFoundError:
        raise ProcessLookupError(path) from None
    except ProcessLookupError:
        raise
    except OSError as e:
        raise SpiceError("dump", f"{what}: cannot read {path}: {e.strerror}") from None


class Stat:
    """The fields of /proc/PID/stat CRIU's parse_pid_stat keeps (by their proc(5) names)."""

    __slots__ = ("pid", "comm", "state", "ppid", "pgid", "sid", "flags", "num_threads", "start_time", "start_code",
                 "end_code", "start_stack", "start_data", "end_data", "start_brk", "arg_start", "arg_end",
                 "env_start", "env_end", "exit_code")

    def __init__(self, **kw: object) -> None:
        for k, v in kw.items():
            setattr(self, k, v)


def parse_stat(text: str) -> Stat:
    head, _, rest = text.rpartition(")")
    pid_s, _, comm = head.partition(" (")
    f = rest.split()
    # f[0] is field 3 (state); field N of proc(5) is f[N - 3]
    n = lambda i: int(f[i - 3])  # noqa: E731
    return Stat(
        pid=int(pid_s), comm=comm, state=f[0], ppid=n(4), pgid=n(5), sid=n(6), flags=n(9),
        num_threads=n(20), start_time=n(22), start_code=n(26), end_code=n(27), start_stack=n(28),
        start_data=n(45), end_data=n(46), start_brk=n(47), arg_start=n(48), arg_end=n(49),
        env_start=n(50), env_end=n(51), exit_code=n(52),
    )


def stat(pid: int, tid: int | None = None) -> Stat:
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    return parse_stat(read_text(path, f"task {tid or pid}"))


def status(pid: int, tid: int | None = None) -> dict[str, str]:
    """/proc/PID[/task/TID]/status as key -> raw value."""
    path = f"/proc/{pid}/status" if tid is None else f"/proc/{pid}/task/{tid}/status"
    out = {}
    for line in read_text(path, f"task {tid or pid}").splitlines():
        k, _, v = line.partition(":")
        out[k] = v.strip()
    return out


def caps_words(hexval: str) -> list[int]:
    """A /proc status capability mask as CRIU's two u32 words (low word first)."""
    v = int(hexval, 16)
    return [v & 0xFFFFFFFF, v >> 32]


def task_tids(pid: int) -> list[int]:
    try:
        return sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
    except FileNotFoundError:
        raise ProcessLookupError(pid) from None


def children(pid: int, tids: list[int]) -> list[int]:
    """Children of every thread of pid, in the kernel's list order (creation order)."""
    out: list[int] = []
    for tid in tids:
        try:
            text = read_text(f"/proc/{pid}/task/{tid}/children", f"task {pid}")
        except ProcessLookupError:
            continue
        out.extend(int(c) for c in text.split())
    return out


# -------------------------------------------------------------------------------- smaps


class MapLine:
    """One /proc/PID/smaps entry: the maps line and its VmFlags."""

    __slots__ = ("start", "end", "perms", "pgoff", "dev_major", "dev_minor", "inode", "path", "vmflags")

    def __init__(self, start: int, end: int, perms: str, pgoff: int, dev_major: int, dev_minor: int, inode: int,
                 path: str, vmflags: list[str] | None = None) -> None:
        self.start, self.end, self.perms, self.pgoff = start, end, perms, pgoff
        self.dev_major, self.dev_minor, self.inode, self.path = dev_major, dev_minor, inode, path
        self.vmflags = vmflags or []

    @property
    def dev(self) -> int:
        return os.makedev(self.dev_major, self.dev_minor)

    @property
    def size(self) -> int:
        return self.end - self.start


def _map_line(line: str) -> MapLine:
    parts = line.split(None, 5)
    lo, hi = parts[0].split("-")
    maj, mino = parts[3].split(":")
    return MapLine(int(lo, 16), int(hi, 16), parts[1], int(parts[2], 16), int(maj, 16), int(mino, 16),
                   int(parts[4]), parts[5] if len(parts) > 5 else "")


def parse_smaps(text: str) -> list[MapLine]:
    if "\nVmFlags:" in text:
        # every entry ends with its VmFlags line (Linux >= 3.8): the maps line is the one after it,
        # so the ~20 counter lines per entry need not be looked at (half of a dump's smaps time)
        chunks = text.split("\nVmFlags:")
        out = [_map_line(chunks[0].partition("\n")[0])]
        for chunk in chunks[1:]:
            flags, _, rest = chunk.partition("\n")
            out[-1].vmflags = flags.split()
            if rest:
                out.append(_map_line(rest.partition("\n")[0]))
        return out
    out: list[MapLine] = []
    for line in text.splitlines():
        if not line:
            continue
        c = line[0]
        if ("0" <= c <= "9" or "a" <= c <= "f") and "-" in line.split(" ", 1)[0]:
            out.append(_map_line(line))
        elif line.startswith("VmFlags:") and out:
            out[-1].vmflags = line[8:].split()
    return out


def smaps(pid: int) -> list[MapLine]:
    return parse_smaps(read_text(f"/proc/{pid}/smaps", f"task {pid}"))


# -------------------------------------------------------------------------------- fdinfo


class FdInfo:
    """/proc/PID/fdinfo/FD: pos, flags (octal there: f_flags | O_CLOEXEC if close-on-exec), mnt_id, ino."""

    __slots__ = ("pos", "flags", "mnt_id", "ino", "extra", "locks")

    def __init__(self, pos: int, flags: int, mnt_id: int, ino: int, extra: dict[str, str],
                 locks: list[str] | None = None) -> None:
        self.pos, self.flags, self.mnt_id, self.ino, self.extra = pos, flags, mnt_id, ino, extra
        self.locks = locks or []  # the "lock:" lines: file locks this fd holds


def fdinfo(pid: int, fd: int) -> FdInfo:
    text = read_text(f"/proc/{pid}/fdinfo/{fd}", f"task {pid} fd {fd}")
    kv: dict[str, str] = {}
    locks: list[str] = []
    for line in text.splitlines():
        k, sep, v = line.partition(":")
        if k == "lock":
            locks.append(v.strip())
        elif sep and k not in kv:
            kv[k] = v.strip()
    return FdInfo(int(kv.get("pos", "0")), int(kv.get("flags", "0"), 8), int(kv.get("mnt_id", "-1")),
                  int(kv.get("ino", "0")), kv, locks)


def fds(pid: int) -> list[int]:
    try:
        return sorted(int(d) for d in os.listdir(f"/proc/{pid}/fd"))
    except FileNotFoundError:
        raise ProcessLookupError(pid) from None


def fd_link(pid: int, fd: int) -> str:
    return os.readlink(f"/proc/{pid}/fd/{fd}")
