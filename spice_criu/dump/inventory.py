# SPDX-License-Identifier: MIT
"""The images that describe the dump as a whole: inventory.img (written last) and timens-<id>.img.

inventory.img is what makes a directory restorable: img_version 2, fdinfo_per_id, the dumper's own
object/namespace ids (root_ids: restore compares every task's ids with them to know which namespaces
it must create), the dumper's own cgroup set (root_cg_set 1, see cgroups.py), the network-lock
method and a run id, exactly the fields CRIU 4.2.1 sets.
"""

from __future__ import annotations

import os
import time

from ..clocks import CLOCKS, timens_offsets
from ..images import codec
from ..images.lite import Message

NETWORK_LOCK = {"iptables": 0, "nftables": 1, "skip": 2}
NO_LSM, SELINUX, APPARMOR = 0, 1, 2


def lsm_type() -> int:
    """The host LSM as CRIU's kerndat detects it."""
    if os.path.exists("/sys/fs/selinux/enforce"):
        return SELINUX
    if os.path.exists("/sys/kernel/security/apparmor"):
        return APPARMOR
    return NO_LSM


def inventory(root_ids: Message, network_lock: str, run_id: str | None = None, tcp_close: bool = False) -> Message:
    """run_id: the dump run's id (it names the nftables lock table restore removes); tcp_close: dumped
    with --tcp-close (no connection state saved), which the restore must then be given too."""
    inv = codec.pb("inventory_entry", lite=True)(img_version=2, fdinfo_per_id=True, ns_per_id=True, root_cg_set=1,
                                      lsmtype=lsm_type(), network_lock_method=NETWORK_LOCK.get(network_lock, 0),
                                      dump_criu_run_id=run_id or new_run_id())
    if tcp_close:
        inv.tcp_close = True
    inv.root_ids.CopyFrom(root_ids)
    inv.plugins_entry.SetInParent()
    return inv


def timens(pid: int | None = None) -> Message:
    """timens-<id>.img: the monotonic and boot clocks at dump time, as the tree sees them: ours when
    it shares our time namespace (timens-0.img), else the host's plus the offsets of pid's."""
    ours = timens_offsets()
    theirs = timens_offsets(pid) if pid is not None else ours
    e = codec.pb("timens_entry", lite=True)()
    for field, clock in CLOCKS:
        ns = time.clock_gettime_ns(clock) - ours.get(field, 0) + theirs.get(field, 0)
        ts = getattr(e, field)
        ts.tv_sec, ts.tv_nsec = ns // 10**9, ns % 10**9
    return e


def new_run_id() -> str:
    """A random (version 4) UUID, as CRIU's dump_criu_run_id; without the uuid module, whose import
    (platform, re) costs more than a small dump's work."""
    b = bytearray(os.urandom(16))
    b[6] = b[6] & 0x0F | 0x40
    b[8] = b[8] & 0x3F | 0x80
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
