# SPDX-License-Identifier: MIT
"""The tree's own namespaces, made again with the root task, as CRIU's restore makes them.

A namespace id of the root's that differs from the inventory's root_ids (the dumper's) is the
tree's own: the root is cloned into a new namespace of that kind (its clone flag below), and every
other task, forked inside the tree, inherits it. Right after the root exists and before any other
task is forked, each kind's module fills its new namespace from the images (CRIU's
prepare_namespace): `setup(plan, root_ctl, ctx)`. The time namespace is entered before the root is
cloned (restore/timens.py), so it has no flag or module here. Kinds missing here are refused by the
plan, naming them.
"""

from __future__ import annotations

from ..linux.clone3 import CLONE_NEWIPC, CLONE_NEWNET, CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWUTS

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..images.lite import Message
    from .files import OpenContext
    from .plan import RestorePlan
    from .task import TaskCtl


#: the kinds spice makes again, in setup order, each with (clone flag, module or None)
MADE: dict[str, tuple[int, str | None]] = {
    "pid": (CLONE_NEWPID, None),  # the root is its init; the others are forked in it (restore/tree.py)
    "net": (CLONE_NEWNET, "netns"),
    "uts": (CLONE_NEWUTS, "utsns"),
    "ipc": (CLONE_NEWIPC, "ipcns"),
    "mnt": (CLONE_NEWNS, "mntns"),
}


def own(ids: Message, inv: Message) -> dict[str, int]:
    """The root's namespaces that are not the dumper's, by kind (time excluded): kind -> id."""
    root = inv.root_ids
    got = {}
    for ns in ("pid", "net", "ipc", "uts", "mnt", "user", "cgroup"):
        f = f"{ns}_ns_id"
        if ids.HasField(f) and root.HasField(f) and getattr(ids, f) != getattr(root, f):
            got[ns] = getattr(ids, f)
    return got


def clone_flags(plan: RestorePlan) -> int:
    """The flags that clone the root into new namespaces of the tree's own kinds."""
    flags = 0
    for ns in plan.own_ns:
        flags |= MADE[ns][0]
    return flags


def setup(plan: RestorePlan, root: TaskCtl, ctx: OpenContext) -> None:
    """Fill the root's new namespaces from the images, before any other task is forked."""
    for ns, (_, module) in MADE.items():
        if ns in plan.own_ns and module is not None:
            __import__(f"{__package__}.{module}", fromlist=["setup"]).setup(plan, root, ctx)
