# SPDX-License-Identifier: MIT
"""`spice check [--feature NAME]`: what this kernel offers spice, answered honestly (criu's wording)."""

from __future__ import annotations

import os

from .errors import SpiceError

TYPE_CHECKING = False  # typing costs ~10 ms of start-up; annotations are strings
if TYPE_CHECKING:
    from collections.abc import Callable


def _proc_has(path: str) -> bool:
    return os.path.exists(path)


def _config(name: str) -> bool | None:
    """A kernel config option from /proc/config.gz or /boot, None if unknown."""
    import gzip

    lines: list[str] = []
    try:
        with gzip.open("/proc/config.gz", "rt") as f:
            lines = f.read().splitlines()
    except OSError:
        try:
            with open(f"/boot/config-{os.uname().release}") as f:
                lines = f.read().splitlines()
        except OSError:
            return None
    return f"{name}=y" in lines


def _soft_dirty() -> bool:
    return bool(_config("CONFIG_MEM_SOFT_DIRTY"))


def _uffd() -> bool:
    return _proc_has("/proc/sys/vm/unprivileged_userfaultfd") or _proc_has("/dev/userfaultfd")


def _kernel_at_least(major: int, minor: int) -> bool:
    rel = os.uname().release.split("-")[0].split(".")
    return (int(rel[0]), int(rel[1])) >= (major, minor)


def _kmod_loaded() -> bool:
    from .restore.backends import module_loaded

    return module_loaded()


def _tcp_half_closed() -> bool:
    """criu's kerndat probe: can TCP_REPAIR be switched on for a connection whose write side is
    shut down (kernels before 4.11 said EPERM)?"""
    import socket

    with socket.create_server(("127.0.0.1", 0)) as lsn, socket.create_connection(lsn.getsockname()) as c:
        c.shutdown(socket.SHUT_WR)
        try:
            c.setsockopt(socket.IPPROTO_TCP, 19, 1)  # TCP_REPAIR: closed silently from here on
        except PermissionError:
            return False
    return True


def _nft_lock() -> bool:
    from .dump.netlock import probe_nftables

    return probe_nftables()


#: feature name (criu's) -> probe
FEATURES: dict[str, Callable[[], bool]] = {
    "mem_dirty_track": _soft_dirty,
    "uffd": _uffd,
    "uffd-noncoop": _uffd,
    "clone3_set_tid": lambda: _kernel_at_least(5, 5),
    "pidfd_store": lambda: _kernel_at_least(5, 6),
    "pagemap_scan": lambda: _kernel_at_least(6, 7),
    "timens": lambda: _proc_has("/proc/self/ns/time"),
    "get_rseq_conf": lambda: _kernel_at_least(6, 3),
    "can_map_vdso": lambda: True,
    "ns_pid": lambda: _kernel_at_least(4, 1),
    "kcmp_epoll": lambda: _kernel_at_least(4, 13),
    "openat2": lambda: _kernel_at_least(5, 6),
    "kmod": _kmod_loaded,
    # criu: libnftables present / the lock table accepted; spice speaks nfnetlink itself, so both are
    # whether the kernel takes the lock table
    "nftables": _nft_lock,
    "network_lock_nftables": _nft_lock,
    "tcp_half_closed": _tcp_half_closed,
}


def check(o) -> int:
    if o.feature:
        probe = FEATURES.get(o.feature)
        if probe is None:
            raise SpiceError("check", f"Unknown feature {o.feature}")
        if not probe():
            raise SpiceError("check", f"{o.feature} is not supported")
        print(f"{o.feature} is supported")
        return 0
    required = ("clone3_set_tid", "pidfd_store", "can_map_vdso")
    missing = [f for f in required if not FEATURES[f]()]
    if missing:
        raise SpiceError("check", f"Does not look good: missing {', '.join(missing)}")
    print("Looks good.")
    return 0
