# SPDX-License-Identifier: MIT
"""/proc/PID/mountinfo, read the same way wherever spice needs the host's mounts."""

from __future__ import annotations


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
