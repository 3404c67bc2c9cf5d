# SPDX-License-Identifier: MIT
"""utsns-<id>.img: the host and domain name of the tree's own uts namespace, as CRIU's dump_uts_ns.

Both names are per namespace and only visible from inside it (uname(2), /proc/sys/kernel/*name
resolve in the reader's namespace): a short-lived child joins the root's uts namespace to read them.
"""

from __future__ import annotations

import os

from ..errors import SpiceError
from ..images import codec
from ..linux.setns import NsCallError, call_in

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .run import DumpContext


def _names() -> list[str]:
    with open("/proc/sys/kernel/domainname") as f:
        return [os.uname().nodename, f.read().rstrip("\n")]


def dump(ctx: DumpContext, ns_id: int, pid: int) -> None:
    try:
        nodename, domainname = call_in(pid, ("uts",), _names)  # type: ignore[misc]
    except (OSError, NsCallError) as e:
        raise SpiceError("dump", f"uts namespace {ns_id} (of task {pid}): can't read its names: {e}") from None
    entry = codec.pb("utsns_entry", lite=True)(nodename=nodename, domainname=domainname)
    ctx.images.add(f"utsns-{ns_id}.img", "UTSNS", entry)
