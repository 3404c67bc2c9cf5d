# SPDX-License-Identifier: MIT
"""Where a cgroup is on this host: the cgroup mounts of /proc/self/mountinfo, shared by the dump
(which walks the dumped directories) and the restore (which creates them and moves tasks in).

A hierarchy is named as /proc/PID/cgroup and cgroup.img name it: "" for cgroup2, the controller
names for v1 ("pids", "cpu,cpuacct", "name=systemd"). CRIU mounts each hierarchy itself; spice
uses the mounts the host already has, and a mount may hold only a part of its hierarchy (its root).
"""

from __future__ import annotations

from .mountinfo import unescape

#: (mount point, root of the hierarchy mounted there, fs type, super options)
Mount = tuple[str, str, str, frozenset[str]]


def mounts(mountinfo: str) -> list[Mount]:
    """The cgroup and cgroup2 mounts of a mountinfo text, in its order."""
    out = []
    for line in mountinfo.splitlines():
        head, sep, tail = line.partition(" - ")
        if not sep:
            continue
        f, t = head.split(), tail.split()
        if len(t) >= 3 and t[0] in ("cgroup", "cgroup2"):
            out.append((unescape(f[4]), unescape(f[3]), t[0], frozenset(t[2].split(","))))
    return out


def _holds(m: Mount, name: str) -> bool:
    """Mount m is of hierarchy `name` (for v1: every controller named is mounted there)."""
    if name == "":
        return m[2] == "cgroup2"
    return m[2] == "cgroup" and set(name.split(",")) <= m[3]


def mounted(name: str, mnts: list[Mount]) -> bool:
    return any(_holds(m, name) for m in mnts)


def locate(name: str, path: str, mnts: list[Mount]) -> tuple[str, str] | None:
    """(mount point, host path) of cgroup `path` of hierarchy `name`, through the first mount of
    the hierarchy whose root holds it; None if none does."""
    for m in mnts:
        if not _holds(m, name):
            continue
        mnt, root = m[0], m[1]
        if root == "/":
            return mnt, mnt if path == "/" else mnt + path
        if path == root or path.startswith(root + "/"):
            return mnt, mnt + path[len(root):]
    return None
