# SPDX-License-Identifier: MIT
"""The restored tree's time namespace, made as CRIU 4.2's prepare_timens makes it.

Before the root is forked, the restorer unshares a new time namespace (it applies to the processes
it creates from then on, not to itself) whose offsets put CLOCK_MONOTONIC and CLOCK_BOOTTIME where
they were at the dump (timens-<id>.img: the clocks as the tree saw them). A restored task's clocks
so go on from their dumped values: the time the tree spent dumped does not count, and a restore on
another machine or after a reboot never sees them go back. CRIU restores every tree this way, so a
tree it restored lives in a namespace of its own, which its next dump records (timens-<its id>.img)
and which is made again here; all tasks must share the root's.

The restorer itself stays in its namespace; only the processes it creates from then on enter the
new one. Kernels before 6.8 or so (6.1 here) then refuse it any clone with CLONE_VM or
CLONE_THREAD (EINVAL): the root is spawned without CLONE_VM there (restore/tree.py), and the
restorer must not start threads after this point.
"""

from __future__ import annotations

import os
import time

from ..clocks import CLOCKS, timens_offsets
from ..errors import ImageError, SpiceError
from ..linux.syscalls import NR, syscall
from ..log import log

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .plan import RestorePlan

CLONE_NEWTIME = 0x80


def enter(plan: RestorePlan) -> None:
    """Unshare the tree's time namespace, with the dumped clocks, for the tasks about to be made."""
    name = f"timens-{plan.timens_id}.img"
    entry = plan.imgdir.one(name, optional=True)
    if entry is None:
        if plan.timens_id:
            raise ImageError(plan.imgdir / name, "missing: the tree lives in its own time namespace")
        log.warn("timens", "Clocks values have not been dumped")  # (CRIU's words) host clocks then
        return
    try:
        syscall(NR.unshare, CLONE_NEWTIME)
    except OSError as e:
        # a kernel without time namespaces (EINVAL), or no right to make one (EPERM): a tree that
        # shared the dumper's gets the host's clocks, as spice restored it before this module
        _fail_or_warn(plan, f"can't create a time namespace: {e.strerror}")
        return
    prev = timens_offsets()  # a new namespace starts with its parent's offsets
    lines = []
    for field, clock in CLOCKS:
        dumped = getattr(entry, field)
        host_now = time.clock_gettime_ns(clock) - prev.get(field, 0)
        sec, nsec = divmod(dumped.tv_sec * 10**9 + dumped.tv_nsec - host_now, 10**9)
        lines.append(f"{clock} {sec} {nsec}\n")
    try:
        fd = os.open("/proc/self/timens_offsets", os.O_WRONLY | os.O_CLOEXEC)
        try:
            for line in lines:
                os.write(fd, line.encode())
        finally:
            os.close(fd)
    except OSError as e:
        _fail_or_warn(plan, f"can't set the time namespace's clock offsets ({' / '.join(ln.strip() for ln in lines)}): "
                            f"{e.strerror}")
        return
    log.debug(f"time namespace: offsets {' / '.join(ln.strip() for ln in lines)}")


def _fail_or_warn(plan: RestorePlan, why: str) -> None:
    """A tree in its own time namespace needs it; one that shared the dumper's does without."""
    if plan.timens_id:
        raise SpiceError("restore", why)
    log.warn("timens", f"{why}: the tree gets the host's clocks")
