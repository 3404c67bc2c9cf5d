# SPDX-License-Identifier: MIT
"""The tree's uts namespace made again: the root is cloned into a new one (CLONE_NEWUTS), which
starts with the restorer's names; before any other task exists, the host and domain name of
utsns-<id>.img are set in it, as CRIU's prepare_utsns. The restorer stays in its own namespace: a
short-lived child joins the root's to set them."""

from __future__ import annotations

import ctypes
import os

from ..errors import ImageError, SpiceError
from ..linux.setns import NsCallError, call_in

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .files import OpenContext
    from .plan import RestorePlan
    from .task import TaskCtl

NEW_UTS_LEN = 64  # the kernel's limit on both names, in bytes


def _set_names(nodename: bytes, domainname: bytes) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    for fn, name, what in ((libc.sethostname, nodename, "sethostname"),
                           (libc.setdomainname, domainname, "setdomainname")):
        if fn(name, ctypes.c_size_t(len(name))) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"{what}({name.decode(errors='replace')!r}): {os.strerror(err)}")


def setup(plan: RestorePlan, root: TaskCtl, ctx: OpenContext) -> None:
    name = f"utsns-{plan.own_ns['uts']}.img"
    e = plan.imgdir.one(name)
    names = [os.fsencode(e.nodename), os.fsencode(e.domainname)]
    for n, field in zip(names, ("nodename", "domainname"), strict=True):
        if len(n) > NEW_UTS_LEN:
            raise ImageError(plan.imgdir / name, f"{field} is longer than {NEW_UTS_LEN} bytes")
    try:
        call_in(root.pid, ("uts",), lambda: _set_names(*names))
    except (OSError, NsCallError) as e:
        raise SpiceError("restore", f"uts namespace of task {root.pid}: {e}") from None
