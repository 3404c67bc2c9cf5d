# SPDX-License-Identifier: MIT
"""The tree's own ipc namespace in the images, as CRIU's dump_ipc_ns writes it.

ipcns-var-<id>.img: its SysV IPC and POSIX mqueue limits (spice_criu/ipcvars.py: the fields CRIU
writes; *_next_id only when set, since -1, their initial value, cannot be written back).
ipcns-msg-<id>.img: its SysV message queues, each followed by its messages (read with MSG_COPY,
left in place); ipcns-sem-<id>.img: its semaphore sets and their values. Like CRIU, spice writes
neither image for a namespace without such objects. SysV shared memory segments are refused by
name (CRIU dumps their pages with its shmem machinery).

Everything here is per namespace and resolves in the reader's one (/proc/sys, /proc/sysvipc,
msgctl...): a short-lived child joins the root's ipc namespace to read it.
"""

from __future__ import annotations

from ..errors import SpiceError
from ..images import codec
from ..ipcvars import NEXT_IDS, SYSCTLS
from ..linux import sysvipc
from ..linux.setns import NsCallError, call_in

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .run import DumpContext


def _rows(kind: str) -> list[dict[str, str]]:
    """/proc/sysvipc/<kind>: one dict per object, in the kernel's (index) order, as CRIU's *_STAT walk."""
    with open(f"/proc/sysvipc/{kind}") as f:
        head, *rows = f.read().splitlines()
    return [dict(zip(head.split(), row.split(), strict=False)) for row in rows]


def _desc(qid: int, perm: sysvipc.IpcPerm) -> dict[str, int]:
    return {"key": perm.key & 0xFFFFFFFF, "uid": perm.uid, "gid": perm.gid, "cuid": perm.cuid, "cgid": perm.cgid,
            "mode": perm.mode, "id": qid}


def _read() -> dict[str, object]:
    """In the namespace: its sysctls ({field: values}), its objects, the number of shm segments."""
    vals: dict[str, list[int]] = {}
    for field, path in SYSCTLS:
        try:
            with open(f"/proc/sys/{path}") as f:
                vals[field] = [int(v) for v in f.read().split()]
        except FileNotFoundError:
            continue
    msgs = []
    for row in _rows("msg"):
        qid = int(row["msqid"])
        ds = sysvipc.msg_stat(qid)
        queue = [sysvipc.msg_copy(qid, n, vals["msg_ctlmax"][0]) for n in range(ds.qnum)]
        msgs.append((_desc(qid, ds.perm), ds.qbytes, queue))
    sems = []
    for row in _rows("sem"):
        sid = int(row["semid"])
        ds = sysvipc.sem_stat(sid)
        sems.append((_desc(sid, ds.perm), sysvipc.sem_values(sid, ds.nsems)))
    return {"sysctls": vals, "msg": msgs, "sem": sems, "shm": len(_rows("shm"))}


def var_entry(vals: dict[str, list[int]]):
    """The ipc_var_entry of these sysctl values (a missing mandatory one counts 0, as CRIU's)."""
    e = codec.pb("ipc_var_entry", lite=True)()
    for field, _ in SYSCTLS:
        v = vals.get(field)
        if field == "sem_ctls":
            e.sem_ctls.extend(v or [0, 0, 0, 0])
        elif v is None:
            if not field.startswith("mq_") and field not in NEXT_IDS:
                setattr(e, field, 0)
        elif not (field in NEXT_IDS and v[0] == -1):  # -1: never set, and cannot be written back
            setattr(e, field, v[0])
    return e


def _fill_desc(d, desc: dict[str, int]) -> None:
    for k in ("key", "uid", "gid", "cuid", "cgid", "mode", "id"):
        setattr(d, k, desc[k])


def dump(ctx: DumpContext, ns_id: int, pid: int) -> None:
    try:
        got = call_in(pid, ("ipc",), _read)
    except (OSError, NsCallError) as e:
        raise SpiceError("dump", f"ipc namespace {ns_id} (of task {pid}): can't read it: {e}") from None
    assert isinstance(got, dict)
    if got["shm"]:
        raise SpiceError("dump", f"ipc namespace {ns_id} holds SysV shared memory: not supported")
    ctx.images.add(f"ipcns-var-{ns_id}.img", "IPC_VAR", var_entry(got["sysctls"]))
    for desc, qbytes, queue in got["msg"]:
        e = codec.pb("ipc_msg_entry", lite=True)(qbytes=qbytes, qnum=len(queue))
        _fill_desc(e.desc, desc)
        msgs = [(codec.pb("ipc_msg", lite=True)(mtype=mtype & (1 << 64) - 1, msize=len(text)), text)
                for mtype, text in queue]
        ctx.images.add(f"ipcns-msg-{ns_id}.img", "IPCNS_MSG", e, msgs)
    for desc, values in got["sem"]:
        e = codec.pb("ipc_sem_entry", lite=True)(nsems=len(values))
        _fill_desc(e.desc, desc)
        ctx.images.add(f"ipcns-sem-{ns_id}.img", "IPCNS_SEM", e, values)
