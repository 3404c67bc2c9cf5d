# SPDX-License-Identifier: MIT
"""The tree's ipc namespace made again: the root is cloned into a new one (CLONE_NEWIPC), and
before any other task exists the SysV IPC and mqueue limits of ipcns-var-<id>.img are written in
it, in CRIU's order (prepare_ipc_var): the mqueue ones when the dump had them, the *_next_id ones
when set. The sysctls resolve in the writer's ipc namespace: a short-lived child joins the root's
to write them. SysV objects (ipcns-shm/msg/sem images with entries) are refused by name."""

from __future__ import annotations

from ..errors import SpiceError
from ..ipcvars import NEXT_IDS, SYSCTLS
from ..linux.setns import NsCallError, call_in

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..images.lite import Message
    from .files import OpenContext
    from .plan import RestorePlan
    from .task import TaskCtl

#: SysV object images -> what the refusal calls their entries
OBJECT_IMAGES = (("ipcns-shm", "SysV shared memory"), ("ipcns-msg", "SysV message queues"),
                 ("ipcns-sem", "SysV semaphore sets"))


def writes(e: Message) -> list[tuple[str, str]]:
    """(sysctl path, value) to write for an ipc_var_entry, in CRIU's order."""
    out = [("kernel/sem", " ".join(str(v) for v in e.sem_ctls))]
    for field, path in SYSCTLS[1:]:
        if field in ("auto_msgmni",) and not e.auto_msgmni:
            continue  # (kernels since 3.19 take only 0 there, and CRIU skips a missing one)
        if (field.startswith("mq_") or field in NEXT_IDS) and not e.HasField(field):
            continue
        out.append((path, str(getattr(e, field))))
    return out


def _write(sysctls: list[tuple[str, str]]) -> None:
    for path, value in sysctls:
        try:
            with open(f"/proc/sys/{path}", "w") as f:
                f.write(value)
        except OSError as err:
            raise OSError(err.errno, f"{path} = {value}: {err.strerror}") from None


def setup(plan: RestorePlan, root: TaskCtl, ctx: OpenContext) -> None:
    ns_id = plan.own_ns["ipc"]
    for image, what in OBJECT_IMAGES:
        if plan.imgdir.entries(f"{image}-{ns_id}.img"):
            raise SpiceError("restore", f"ipc namespace {ns_id} holds {what} ({image}-{ns_id}.img): not supported")
    e = plan.imgdir.one(f"ipcns-var-{ns_id}.img")
    sysctls = writes(e)
    try:
        call_in(root.pid, ("ipc",), lambda: _write(sysctls))
    except (OSError, NsCallError) as err:
        raise SpiceError("restore", f"ipc namespace of task {root.pid}: {err}") from None
