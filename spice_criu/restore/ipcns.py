# SPDX-License-Identifier: MIT
"""The tree's ipc namespace made again, as CRIU's prepare_ipc_ns: the root is cloned into a new
one (CLONE_NEWIPC) and, before any other task exists, a short-lived child joins it (the sysctls
and objects resolve in the caller's ipc namespace; the restorer stays in its own) and fills it:

* the limits of ipcns-var-<id>.img, in CRIU's order: the mqueue ones when the dump had them, the
  *_next_id ones when set;
* the message queues of ipcns-msg-<id>.img and semaphore sets of ipcns-sem-<id>.img, each with
  its id (msg/sem_next_id set first), key, mode and owner, its messages queued again in order,
  its semaphore values.

SysV shared memory (ipcns-shm-<id>.img entries) is refused by name, before any object is made.
"""

from __future__ import annotations

from ..errors import ImageError, SpiceError
from ..ipcvars import NEXT_IDS, SYSCTLS
from ..linux import sysvipc
from ..linux.setns import NsCallError, call_in

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..images.lite import Message
    from .files import OpenContext
    from .plan import RestorePlan
    from .task import TaskCtl

MSGMAX = 8192  # CRIU's restore buffer: a bigger message is refused as there


def writes(e: Message) -> list[tuple[str, str]]:
    """(sysctl path, value) to write for an ipc_var_entry, in CRIU's order."""
    out = [("kernel/sem", " ".join(str(v) for v in e.sem_ctls))]
    for field, path in SYSCTLS[1:]:
        if field == "auto_msgmni" and not e.auto_msgmni:
            continue  # (kernels since 3.19 take only 0 there, which it is in a new namespace)
        if (field.startswith("mq_") or field in NEXT_IDS) and not e.HasField(field):
            continue
        out.append((path, str(getattr(e, field))))
    return out


def _sysctl(path: str, value: str) -> None:
    try:
        with open(f"/proc/sys/{path}", "w") as f:
            f.write(value)
    except OSError as err:
        raise OSError(err.errno, f"{path} = {value}: {err.strerror}") from None


def _desc(e: Message) -> dict[str, int]:
    d = e.desc
    return {"key": d.key, "uid": d.uid, "gid": d.gid, "mode": d.mode, "id": d.id}


def _made(kind: str, desc: dict[str, int], got: int) -> None:
    if got != desc["id"]:
        raise OSError(0, f"SysV {kind} {desc['id']} came back as {got}")


def _key(desc: dict[str, int]) -> int:
    return desc["key"] - (1 << 32) if desc["key"] >= 1 << 31 else desc["key"]


def _fill(sysctls: list[tuple[str, str]], queues: list, sems: list) -> None:
    """In the namespace: CRIU's prepare_ipc_var, prepare_ipc_msg, prepare_ipc_sem."""
    for path, value in sysctls:
        _sysctl(path, value)
    for desc, msgs in queues:
        _sysctl("kernel/msg_next_id", str(desc["id"]))
        qid = sysvipc.msgget(_key(desc), desc["mode"] & 0o777 | sysvipc.IPC_CREAT | sysvipc.IPC_EXCL)
        _made("message queue", desc, qid)
        ds = sysvipc.msg_stat(qid)
        ds.perm.uid, ds.perm.gid = desc["uid"], desc["gid"]
        sysvipc.msg_set(qid, ds)
        for mtype, text in msgs:
            sysvipc.msg_send(qid, mtype, text)
    for desc, values in sems:
        _sysctl("kernel/sem_next_id", str(desc["id"]))
        sid = sysvipc.semget(_key(desc), len(values), desc["mode"] & 0o777 | sysvipc.IPC_CREAT | sysvipc.IPC_EXCL)
        _made("semaphore set", desc, sid)
        ds = sysvipc.sem_stat(sid)
        ds.perm.uid, ds.perm.gid = desc["uid"], desc["gid"]
        sysvipc.sem_set(sid, ds)
        sysvipc.sem_set_values(sid, values)


def _objects(plan: RestorePlan, ns_id: int) -> tuple[list, list]:
    """The message queues and semaphore sets of the images, as plain data for the child."""
    name = f"ipcns-msg-{ns_id}.img"
    queues = []
    if plan.imgdir.exists(name):
        for ent in plan.imgdir.load(name).entries:
            msgs = []
            for m, text in ent.extra or []:
                if m.msize > MSGMAX:
                    raise ImageError(plan.imgdir / name, f"queue {ent.msg.desc.id}: a message of {m.msize} bytes "
                                                         f"(more than {MSGMAX}): not supported")
                msgs.append((m.mtype, bytes(text)))
            queues.append((_desc(ent.msg), msgs))
    name = f"ipcns-sem-{ns_id}.img"
    sems = []
    if plan.imgdir.exists(name):
        sems = [(_desc(ent.msg), list(ent.extra or [])) for ent in plan.imgdir.load(name).entries]
    return queues, sems


def setup(plan: RestorePlan, root: TaskCtl, ctx: OpenContext) -> None:
    ns_id = plan.own_ns["ipc"]
    shm = f"ipcns-shm-{ns_id}.img"
    if plan.imgdir.entries(shm):
        raise SpiceError("restore", f"ipc namespace {ns_id} holds SysV shared memory ({shm}): not supported")
    sysctls = writes(plan.imgdir.one(f"ipcns-var-{ns_id}.img"))
    queues, sems = _objects(plan, ns_id)
    try:
        call_in(root.pid, ("ipc",), lambda: _fill(sysctls, queues, sems))
    except (OSError, NsCallError) as err:
        raise SpiceError("restore", f"ipc namespace {ns_id} of task {root.pid}: {err}") from None
