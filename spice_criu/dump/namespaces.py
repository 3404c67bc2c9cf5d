# SPDX-License-Identifier: MIT
"""The tree's own namespaces in the images, as CRIU's dump_namespaces writes them.

A namespace of the root task's that is not the dumper's is the tree's own (dump/ids.py finds them
and refuses kinds missing here). Each kind has a module of its own here that writes its images
(`<kind>ns-<id>.img`...) from the root's pid: `dump(ctx, ns_id, pid)`. The time namespace's image
is written for every tree (dump/run.py), so it has no module here.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .run import DumpContext

#: the kinds spice dumps when they are the tree's own, in CRIU's order, each with its module (or None)
DUMPED: dict[str, str | None] = {
    "pid": None,  # nothing to write: the images hold the pids inside it (dump/tree.py PidMap)
    "net": "netns",
    "time": None,
    "uts": "utsns",
    "ipc": "ipcns",
    "mnt": "mntns",
}


def dump(ctx: DumpContext) -> None:
    """Write the images of every namespace the tree owns (once all its tasks were collected)."""
    for ns, module in DUMPED.items():
        own = ctx.ids.own_ns(ns)
        if own is not None and module is not None:
            __import__(f"{__package__}.{module}", fromlist=["dump"]).dump(ctx, *own)
