# SPDX-License-Identifier: MIT
"""CRIU's image magics (criu/include/magic.h) and the file-name templates that select them.

crit names images by magic with the `_MAGIC` suffix stripped; spice uses the same names so its JSON
and errors read like crit's.
"""

from __future__ import annotations

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


# File names CRIU writes, to the magic expected inside ("RAW": no header at all). Matched without
# regular expressions: `spice restore` looks names up on its start-up path.
_EXACT: dict[str, str] = {
    "inventory.img": "INVENTORY", "pstree.img": "PSTREE", "files.img": "FILES", "seccomp.img": "SECCOMP",
    "cgroup.img": "CGROUP", "reg-files.img": "REG_FILES", "ext-files.img": "EXT_FILES",
    "remap-fpath.img": "REMAP_FPATH", "pipes.img": "PIPES", "pipes-data.img": "PIPES_DATA",
    "fifo.img": "FIFO", "fifo-data.img": "FIFO_DATA", "sk-queues.img": "SK_QUEUES", "unixsk.img": "UNIXSK",
    "inetsk.img": "INETSK", "packetsk.img": "PACKETSK", "netlinksk.img": "NETLINK_SK",
    "eventfd.img": "EVENTFD_FILE", "eventpoll.img": "EVENTPOLL_FILE", "eventpoll-tfd.img": "EVENTPOLL_TFD",
    "signalfd.img": "SIGNALFD", "inotify.img": "INOTIFY_FILE", "inotify-wd.img": "INOTIFY_WD",
    "fanotify.img": "FANOTIFY_FILE", "fanotify-mark.img": "FANOTIFY_MARK", "timerfd.img": "TIMERFD",
    "tunfile.img": "TUNFILE", "ns-files.img": "NS_FILES", "tty.img": "TTY_FILES", "tty-info.img": "TTY_INFO",
    "tty-data.img": "TTY_DATA", "filelocks.img": "FILE_LOCKS", "memfd.img": "MEMFD_INODE",
    "cpuinfo.img": "CPUINFO", "binfmt-misc.img": "BINFMT_MISC", "bpfmap-file.img": "BPFMAP_FILE",
    "bpfmap-data.img": "BPFMAP_DATA", "apparmor.img": "APPARMOR", "pidfd.img": "PIDFD",
    "stats-dump": "STATS", "stats-restore": "STATS", "irmap-cache": "IRMAP_CACHE",
}
# "<prefix>-<decimal id>.img"
_NUMBERED: dict[str, str] = {
    "core": "CORE", "ids": "IDS", "mm": "MM", "vmas": "VMAS", "pagemap": "PAGEMAP", "pagemap-shmem": "PAGEMAP",
    "pages": "RAW", "pages-shmem": "PAGEMAP", "fdinfo": "FDINFO", "fs": "FS", "timens": "TIMENS",
    "pidns": "PIDNS", "creds": "CREDS", "sigacts": "SIGACT", "rlimit": "RLIMIT", "itimers": "ITIMERS",
    "posix-timers": "POSIX_TIMERS", "signal-s": "SIGNAL", "signal-p": "SIGNAL", "utsns": "UTSNS",
    "ipcns-var": "IPC_VAR", "ipcns-shm": "IPCNS_SHM", "ipcns-msg": "IPCNS_MSG", "ipcns-sem": "IPCNS_SEM",
    "mountpoints": "MNTS", "netns": "NETNS", "netdev": "NETDEV", "userns": "USERNS", "autofs": "AUTOFS",
    "binfmt-misc": "BINFMT_MISC", "ifaddr": "RAW", "route": "RAW", "route6": "RAW", "rule": "RAW",
    "iptables": "RAW", "ip6tables": "RAW", "nftables": "RAW", "netns-ct": "RAW", "netns-exp": "RAW",
}
# "<prefix>-<hex id>.img"
_HEX_NUMBERED: dict[str, str] = {"ghost-file": "GHOST_FILE", "tcp-stream": "TCP_STREAM"}
_HEX_DIGITS = frozenset("0123456789abcdef")


def magic_for_filename(filename: str) -> str | None:
    """The magic name CRIU puts in a file of this name, "RAW" for headerless images, None if unknown."""
    name = _EXACT.get(filename)
    if name is not None:
        return name
    for tail in (".tar.gz.img", ".tar.gz"):  # tmpfs-<id> / tmpfs-dev-<id> archives
        if filename.endswith(tail):
            prefix, _, num = filename[: -len(tail)].rpartition("-")
            return "RAW" if prefix in ("tmpfs", "tmpfs-dev") and num.isdecimal() else None
    if not filename.endswith(".img"):
        return None
    prefix, _, num = filename[:-4].rpartition("-")
    if num.isdecimal() and num.isascii() and prefix in _NUMBERED:
        return _NUMBERED[prefix]
    if num and set(num) <= _HEX_DIGITS:
        return _HEX_NUMBERED.get(prefix)
    return None
