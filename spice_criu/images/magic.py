# SPDX-License-Identifier: MIT
"""CRIU's image magics (criu/include/magic.h) and the file-name templates that select them.

crit names images by magic with the `_MAGIC` suffix stripped; spice uses the same names so its JSON
and errors read like crit's.
"""

from __future__ import annotations

import re
from functools import cache

IMG_COMMON = 0x54564319
IMG_SERVICE = 0x55105940
RAW = 0

#: name -> value, every magic CRIU 4.2.1 knows (including legacy ones it only reads).
MAGICS: dict[str, int] = {
    "INVENTORY": 0x58313116,
    "PSTREE": 0x50273030,
    "FDINFO": 0x56213732,
    "PAGEMAP": 0x56084025,
    "CORE": 0x55053847,
    "IDS": 0x54432030,
    "VMAS": 0x54123737,
    "PIPES": 0x56513555,
    "PIPES_DATA": 0x56453709,
    "FIFO": 0x58364939,
    "FIFO_DATA": 0x59333054,
    "SIGACT": 0x55344201,
    "UNIXSK": 0x54373943,
    "INETSK": 0x56443851,
    "PACKETSK": 0x60454618,
    "ITIMERS": 0x57464056,
    "POSIX_TIMERS": 0x52603957,
    "SK_QUEUES": 0x56264026,
    "UTSNS": 0x54473203,
    "CREDS": 0x54023547,
    "IPC_VAR": 0x53115007,
    "IPCNS_SHM": 0x46283044,
    "IPCNS_MSG": 0x55453737,
    "IPCNS_SEM": 0x59573019,
    "REG_FILES": 0x50363636,
    "EXT_FILES": 0x59255641,
    "FS": 0x51403912,
    "MM": 0x57492820,
    "REMAP_FPATH": 0x59133954,
    "GHOST_FILE": 0x52583605,
    "TCP_STREAM": 0x51465506,
    "EVENTFD_FILE": 0x44523722,
    "EVENTPOLL_FILE": 0x45023858,
    "EVENTPOLL_TFD": 0x44433746,
    "SIGNALFD": 0x57323820,
    "INOTIFY_FILE": 0x48424431,
    "INOTIFY_WD": 0x54562009,
    "MNTS": 0x55563928,
    "NETDEV": 0x57373951,
    "NETNS": 0x55933752,
    "TTY_FILES": 0x59433025,
    "TTY_INFO": 0x59453036,
    "TTY_DATA": 0x59413026,
    "FILE_LOCKS": 0x54323616,
    "RLIMIT": 0x57113925,
    "FANOTIFY_FILE": 0x55096122,
    "FANOTIFY_MARK": 0x56506035,
    "SIGNAL": 0x59255647,
    "NETLINK_SK": 0x58005614,
    "NS_FILES": 0x61394011,
    "TUNFILE": 0x57143751,
    "CGROUP": 0x59383330,
    "TIMERFD": 0x50493712,
    "CPUINFO": 0x61404013,
    "USERNS": 0x55474906,
    "SECCOMP": 0x64413049,
    "BINFMT_MISC": 0x67343323,
    "AUTOFS": 0x49353943,
    "FILES": 0x56303138,
    "MEMFD_INODE": 0x48453499,
    "TIMENS": 0x43114433,
    "PIDNS": 0x61157326,
    "BPFMAP_FILE": 0x57506142,
    "BPFMAP_DATA": 0x64324033,
    "APPARMOR": 0x59423047,
    "PIDFD": 0x54435556,
    "STATS": 0x57093306,
    "IRMAP_CACHE": 0x57004059,
    "KDAT": 0x57023458,
}

BY_VALUE: dict[int, str] = {v: k for k, v in MAGICS.items()}

#: images preceded by IMG_SERVICE instead of IMG_COMMON
SERVICE_IMAGES = frozenset({"STATS", "IRMAP_CACHE"})


def head_magic(name: str) -> int | None:
    """The first u32 of an image: none for inventory (it carries img_version instead)."""
    if name == "INVENTORY":
        return None
    return IMG_SERVICE if name in SERVICE_IMAGES else IMG_COMMON


# File names CRIU writes, to the magic expected inside ("RAW": no header at all).
_NAME_PATTERNS: list[tuple[str, str]] = [
    (r"inventory\.img", "INVENTORY"),
    (r"pstree\.img", "PSTREE"),
    (r"core-\d+\.img", "CORE"),
    (r"ids-\d+\.img", "IDS"),
    (r"mm-\d+\.img", "MM"),
    (r"vmas-\d+\.img", "VMAS"),
    (r"pagemap-\d+\.img", "PAGEMAP"),
    (r"pagemap-shmem-\d+\.img", "PAGEMAP"),
    (r"pages-\d+\.img", "RAW"),
    (r"pages-shmem-\d+\.img", "PAGEMAP"),
    (r"fdinfo-\d+\.img", "FDINFO"),
    (r"files\.img", "FILES"),
    (r"fs-\d+\.img", "FS"),
    (r"timens-\d+\.img", "TIMENS"),
    (r"pidns-\d+\.img", "PIDNS"),
    (r"seccomp\.img", "SECCOMP"),
    (r"cgroup\.img", "CGROUP"),
    (r"creds-\d+\.img", "CREDS"),
    (r"sigacts-\d+\.img", "SIGACT"),
    (r"rlimit-\d+\.img", "RLIMIT"),
    (r"itimers-\d+\.img", "ITIMERS"),
    (r"posix-timers-\d+\.img", "POSIX_TIMERS"),
    (r"signal-[sp]-\d+\.img", "SIGNAL"),
    (r"utsns-\d+\.img", "UTSNS"),
    (r"ipcns-var-\d+\.img", "IPC_VAR"),
    (r"ipcns-shm-\d+\.img", "IPCNS_SHM"),
    (r"ipcns-msg-\d+\.img", "IPCNS_MSG"),
    (r"ipcns-sem-\d+\.img", "IPCNS_SEM"),
    (r"mountpoints-\d+\.img", "MNTS"),
    (r"netns-\d+\.img", "NETNS"),
    (r"netdev-\d+\.img", "NETDEV"),
    (r"userns-\d+\.img", "USERNS"),
    (r"(ifaddr|route6?|rule|iptables|ip6tables|nftables|netns-ct|netns-exp)-\d+\.img", "RAW"),
    (r"tmpfs(-dev)?-\d+\.tar\.gz\.img", "RAW"),
    (r"tmpfs(-dev)?-\d+\.tar\.gz", "RAW"),
    (r"reg-files\.img", "REG_FILES"),
    (r"ext-files\.img", "EXT_FILES"),
    (r"remap-fpath\.img", "REMAP_FPATH"),
    (r"ghost-file-[0-9a-f]+\.img", "GHOST_FILE"),
    (r"tcp-stream-[0-9a-f]+\.img", "TCP_STREAM"),
    (r"pipes\.img", "PIPES"),
    (r"pipes-data\.img", "PIPES_DATA"),
    (r"fifo\.img", "FIFO"),
    (r"fifo-data\.img", "FIFO_DATA"),
    (r"sk-queues\.img", "SK_QUEUES"),
    (r"unixsk\.img", "UNIXSK"),
    (r"inetsk\.img", "INETSK"),
    (r"packetsk\.img", "PACKETSK"),
    (r"netlinksk\.img", "NETLINK_SK"),
    (r"eventfd\.img", "EVENTFD_FILE"),
    (r"eventpoll\.img", "EVENTPOLL_FILE"),
    (r"eventpoll-tfd\.img", "EVENTPOLL_TFD"),
    (r"signalfd\.img", "SIGNALFD"),
    (r"inotify\.img", "INOTIFY_FILE"),
    (r"inotify-wd\.img", "INOTIFY_WD"),
    (r"fanotify\.img", "FANOTIFY_FILE"),
    (r"fanotify-mark\.img", "FANOTIFY_MARK"),
    (r"timerfd\.img", "TIMERFD"),
    (r"tunfile\.img", "TUNFILE"),
    (r"ns-files\.img", "NS_FILES"),
    (r"tty\.img", "TTY_FILES"),
    (r"tty-info\.img", "TTY_INFO"),
    (r"tty-data\.img", "TTY_DATA"),
    (r"filelocks\.img", "FILE_LOCKS"),
    (r"memfd\.img", "MEMFD_INODE"),
    (r"cpuinfo\.img", "CPUINFO"),
    (r"binfmt-misc(-\d+)?\.img", "BINFMT_MISC"),
    (r"autofs-\d+\.img", "AUTOFS"),
    (r"bpfmap-file\.img", "BPFMAP_FILE"),
    (r"bpfmap-data\.img", "BPFMAP_DATA"),
    (r"apparmor\.img", "APPARMOR"),
    (r"pidfd\.img", "PIDFD"),
    (r"stats-(dump|restore)", "STATS"),
    (r"irmap-cache", "IRMAP_CACHE"),
]
@cache
def _name_regex() -> re.Pattern[str]:
    """One regex with a named group per pattern, compiled on first use (start-up stays cheap)."""
    return re.compile("|".join(f"(?P<m{i}>{p})" for i, (p, _) in enumerate(_NAME_PATTERNS)))


@cache
def magic_for_filename(filename: str) -> str | None:
    """The magic name CRIU puts in a file of this name, "RAW" for headerless images, None if unknown."""
    m = _name_regex().fullmatch(filename)
    if m is None:
        return None
    return _NAME_PATTERNS[int(m.lastgroup[1:])][1]
