# SPDX-License-Identifier: MIT
"""/proc/PID/mountinfo, read the same way wherever spice needs the mounts of a task."""

from __future__ import annotations

from .record import Factory, Record


def unescape(s: str) -> str:
    """mountinfo's octal escapes (\\040 for a space...)."""
    if "\\" not in s:
        return s
    return s.encode().decode("unicode_escape").encode("latin-1").decode("utf-8", "surrogateescape")


def mount_points(mountinfo: str, major: int, minor: int) -> list[str]:
    """The mount points of the filesystem on device major:minor, in mountinfo's order."""
    dev = f"{major}:{minor}"
    out = []
    for line in mountinfo.splitlines():
        f = line.split()
        if len(f) > 4 and f[2] == dev:
            out.append(unescape(f[4]))
    return out


class Mount(Record):
    """One line of mountinfo (proc(5)): ids, device, the mounted part of its filesystem, where."""

    mnt_id: int
    parent_id: int
    major: int
    minor: int
    root: str
    mountpoint: str
    mnt_opts: list[str]
    optional: dict[str, int] = Factory(dict)  # shared:N, master:N, propagate_from:N
    fstype: str = ""
    source: str = ""
    sb_opts: list[str] = Factory(list)


def parse(text: str) -> list[Mount]:
    """Every mount of a mountinfo text, in its order."""
    out = []
    for line in text.splitlines():
        f = line.split(" ")
        sep = f.index("-")
        opt = {}
        for o in f[6:sep]:
            k, _, v = o.partition(":")
            if v.isdigit():
                opt[k] = int(v)
        major, minor = f[2].split(":")
        out.append(Mount(int(f[0]), int(f[1]), int(major), int(minor), unescape(f[3]), unescape(f[4]),
                         f[5].split(","), opt, f[sep + 1], unescape(f[sep + 2]), f[sep + 3].split(",")))
    return out


def mnt_externals(external: list[str]) -> dict[str, str]:
    """The `mnt[A]:B` entries of --external (RPC ext_mnt becomes them too), A -> B: on dump a mount
    point and the key it is written with, on restore a key and the path bound in its place."""
    out = {}
    for e in external:
        if e.startswith("mnt[") and "]:" in e:
            a, _, b = e[4:].partition("]:")
            out[a] = b
    return out
