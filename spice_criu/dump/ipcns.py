# SPDX-License-Identifier: MIT
"""ipcns-var-<id>.img: the SysV IPC and POSIX mqueue limits of the tree's own ipc namespace, the
fields and values CRIU's dump_ipc_var writes.

The sysctls are per namespace and resolve in the reader's one, so a short-lived child joins the
root's ipc namespace to read them (and /proc/sysvipc/*, which lists the namespace's objects).
The *_next_id sysctls are written only when set (-1, their initial value, cannot be written back);
the mqueue ones only when the kernel has them. SysV objects (shared memory segments, message
queues, semaphore sets) would go in ipcns-shm/msg/sem images: spice refuses a namespace holding
any, naming the kind; CRIU writes none of those images for an empty namespace, nor does spice.
"""

from __future__ import annotations

from ..errors import SpiceError
from ..images import codec
from ..ipcvars import NEXT_IDS, SYSCTLS
from ..linux.setns import NsCallError, call_in

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .run import DumpContext

#: /proc/sysvipc listing -> what the refusal calls it
OBJECTS = (("shm", "SysV shared memory"), ("msg", "SysV message queues"), ("sem", "SysV semaphore sets"))


def _read() -> dict[str, object]:
    """In the namespace: every sysctl there is ({field: values}) and the number of each object kind."""
    vals: dict[str, list[int]] = {}
    for field, path in SYSCTLS:
        try:
            with open(f"/proc/sys/{path}") as f:
                vals[field] = [int(v) for v in f.read().split()]
        except FileNotFoundError:
            continue
    objs = {}
    for kind, _ in OBJECTS:
        with open(f"/proc/sysvipc/{kind}") as f:
            objs[kind] = max(0, len(f.read().splitlines()) - 1)  # a header line, then one per object
    return {"sysctls": vals, "objects": objs}


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


def dump(ctx: DumpContext, ns_id: int, pid: int) -> None:
    try:
        got = call_in(pid, ("ipc",), _read)
    except (OSError, NsCallError) as e:
        raise SpiceError("dump", f"ipc namespace {ns_id} (of task {pid}): can't read it: {e}") from None
    assert isinstance(got, dict)
    for kind, what in OBJECTS:
        if got["objects"][kind]:
            raise SpiceError("dump", f"ipc namespace {ns_id} holds {what}: not supported")
    ctx.images.add(f"ipcns-var-{ns_id}.img", "IPC_VAR", var_entry(got["sysctls"]))
