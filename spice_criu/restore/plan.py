# SPDX-License-Identifier: MIT
"""Images -> one backend-neutral restore plan, validated before any task is created.

The plan names every object to re-create (tasks, threads, VMAs with the source of each page
range, fds, signals, creds, fs, timers). Anything spice cannot restore fails here, up front, with
the object named, so a restore never dies half-way on something it could have refused.
"""

from __future__ import annotations

import os

from ..errors import ImageError, SpiceError
from ..images.imagedir import ImageDir
from ..record import Factory, Record
from . import files as F
from . import namespaces, seccomp
from .mm import MmPlan, ShmemPlan, plan_mm

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..images.lite import Message  # images are decoded without protobuf, into its interface

TASK_ALIVE, TASK_DEAD, TASK_STOPPED, TASK_ZOMBIE = 1, 2, 3, 6
_NS_NAMES = ("pid", "net", "ipc", "uts", "mnt", "user", "cgroup", "time")


class ThreadPlan(Record):
    tid: int
    core: Message  # core_entry: thread_info (regs, fpu, tls) + thread_core


class TaskPlan(Record):
    pid: int
    ppid: int
    pgid: int
    sid: int
    threads: list[ThreadPlan]
    ids: Message
    mm: MmPlan
    fds: list[F.FdPlan]
    cwd: str
    root: str
    umask: int
    children: list[TaskPlan] = Factory(list)
    seccomp: dict[int, list[tuple[bytes, int]]] = Factory(dict)  # tid -> filter chain, oldest first
    cwd_id: int = -1  # the cwd's files.img object (a deleted cwd is a ghost)

    @property
    def leader(self) -> ThreadPlan:
        return self.threads[0]

    @property
    def tc(self) -> Message:
        return self.leader.core.tc

    @property
    def state(self) -> int:
        return self.tc.task_state

    @property
    def zombie(self) -> bool:
        """Dead but not reaped when dumped: restored as a task that exits again with its status."""
        return self.tc.task_state in (TASK_DEAD, TASK_ZOMBIE)


class RestorePlan(Record):
    imgdir: ImageDir
    inventory: Message
    tasks: list[TaskPlan]  # pstree order: parents before children, root first
    files: dict[int, F.FileObj]
    shmems: dict[int, ShmemPlan]
    file_state: dict = Factory(dict)
    #: the tree's time namespace in the images (timens-<id>.img): 0 when it shared the dumper's
    timens_id: int = 0
    #: the tree's other namespaces of its own, made again with the root (restore/namespaces.py): kind -> id
    own_ns: dict[str, int] = Factory(dict)

    @property
    def root(self) -> TaskPlan:
        return self.tasks[0]

    @property
    def pages_total(self) -> int:
        return sum(t.mm.pages_total for t in self.tasks)

    def all_ids(self) -> list[int]:
        return [th.tid for t in self.tasks for th in t.threads]


def _check_inventory(imgdir: ImageDir) -> Message:
    inv = imgdir.one("inventory.img")
    if inv.img_version not in (1, 2):
        raise ImageError(imgdir / "inventory.img", f"unsupported img_version {inv.img_version}")
    if not inv.fdinfo_per_id:
        raise ImageError(imgdir / "inventory.img", "too old image (no fdinfo_per_id)")
    if inv.HasField("plugins_entry") and inv.plugins_entry.plugins:
        raise SpiceError("restore", f"images need CRIU plugins {list(inv.plugins_entry.plugins)}: not supported")
    return inv


def _check_namespaces(pid: int, ids: Message, inv: Message, tree: dict[str, int] | None,
                      root_time: int | None) -> None:
    """Every task shares the root's namespaces (tree: the root's own, restore/namespaces.py); the
    time namespace may be the tree's own too (restore/timens.py). Kinds spice cannot make are refused."""
    if tree is None:  # the root
        for ns in namespaces.own(ids, inv):
            if ns not in namespaces.MADE:
                raise SpiceError("restore", f"task {pid} lives in its own {ns} namespace: not supported")
        return
    if ids.HasField("time_ns_id") and root_time is not None and ids.time_ns_id != root_time:
        raise SpiceError("restore", f"task {pid} lives in another time namespace than the root task: not supported")
    if namespaces.own(ids, inv) != tree:
        ns = next(n for n in _NS_NAMES if n != "time" and namespaces.own(ids, inv).get(n) != tree.get(n))
        raise SpiceError("restore", f"task {pid} lives in its own {ns} namespace: not supported")


def _check_thread(pid: int, core: Message, tid: int) -> None:
    if core.mtype != 1:  # X86_64
        raise SpiceError("restore", f"thread {tid}: architecture {core.mtype} is not x86_64")
    ti = core.thread_info
    if ti.gpregs.mode == 2:
        raise SpiceError("restore", f"thread {tid}: 32-bit (compat) tasks are not supported")
    x = ti.fpregs.xsave if ti.fpregs.HasField("xsave") else None
    if x is not None and x.HasField("cet") and (x.cet.cet or x.cet.ssp):
        raise SpiceError("restore", f"thread {tid}: CET shadow stack state is not supported")
    seccomp.check_supported(tid, core)


def build_plan(images_dir: str | os.PathLike, root: str = "/", inherit: dict[str, int] | None = None) -> RestorePlan:
    """Read and validate everything needed to restore the image set at `images_dir`."""
    imgdir = ImageDir(images_dir, lite=True)  # no protobuf on the restore path
    imgdir.check_restorable()
    inv = _check_inventory(imgdir)
    pstree = imgdir.entries("pstree.img", optional=False)
    if not pstree:
        raise ImageError(imgdir / "pstree.img", "no tasks")
    shmems: dict[int, ShmemPlan] = {}
    files, file_state = F.plan_files(imgdir, shmems)
    tasks: dict[int, TaskPlan] = {}
    order: list[TaskPlan] = []
    root_time: int | None = None  # the root task's time namespace
    own_ns: dict[str, int] | None = None  # the root's other namespaces that are not the dumper's
    for i, pe in enumerate(pstree):
        pid = pe.pid
        if pid in tasks or pid <= 0:
            raise ImageError(imgdir / "pstree.img", f"bad or duplicate pid {pid}")
        if i and pe.ppid not in tasks:
            raise ImageError(imgdir / "pstree.img", f"task {pid}: parent {pe.ppid} is not listed before it")
        leader = imgdir.one(f"core-{pid}.img")
        if not leader.HasField("tc"):
            raise ImageError(imgdir / f"core-{pid}.img", "leader core has no task state (tc)")
        state = leader.tc.task_state
        if state in (TASK_ZOMBIE, TASK_DEAD):  # (CRIU writes no meaningful thread ids for them)
            if not i:
                raise SpiceError("restore", f"the root task {pid} is a zombie: nothing to restore")
            t = _zombie_plan(pe, leader)
            tasks[pe.ppid].children.append(t)
            tasks[pid] = t
            order.append(t)
            continue
        threads_ids = list(pe.threads) or [pid]
        if threads_ids[0] != pid:
            threads_ids = [pid] + [t for t in threads_ids if t != pid]
        threads = [ThreadPlan(pid, leader)] + [ThreadPlan(tid, imgdir.one(f"core-{tid}.img"))
                                               for tid in threads_ids[1:]]
        if state not in (TASK_ALIVE, TASK_STOPPED):
            raise ImageError(imgdir / f"core-{pid}.img", f"unknown task_state {state}")
        for th in threads:
            _check_thread(pid, th.core, th.tid)
        ids = imgdir.one(f"ids-{pid}.img")
        if not i:
            root_time = ids.time_ns_id if ids.HasField("time_ns_id") else None
        _check_namespaces(pid, ids, inv, own_ns, root_time)
        if not i:
            own_ns = namespaces.own(ids, inv)
        for other in tasks.values():
            if other.zombie:
                continue
            if other.ids.files_id == ids.files_id:
                raise SpiceError("restore", f"tasks {other.pid} and {pid} share an fd table: not supported")
            if other.ids.vm_id == ids.vm_id:
                raise SpiceError("restore", f"tasks {other.pid} and {pid} share memory (CLONE_VM): not supported")
        filters = seccomp.chains(imgdir, {th.tid: th.core for th in threads})
        fs = imgdir.one(f"fs-{pid}.img")
        mm = plan_mm(imgdir, pid, files, shmems)
        fds = F.plan_fds(imgdir, pid, ids.files_id, files)
        t = TaskPlan(
            pid=pid,
            ppid=pe.ppid,
            pgid=pe.pgid,
            sid=pe.sid,
            threads=threads,
            ids=ids,
            mm=mm,
            fds=fds,
            cwd=F.file_path(files, fs.cwd_id, f"task {pid} cwd"),
            cwd_id=fs.cwd_id,
            root=F.file_path(files, fs.root_id, f"task {pid} root"),
            umask=fs.umask if fs.HasField("umask") else 0o022,
            seccomp=filters,
        )
        if i:
            tasks[pe.ppid].children.append(t)
        tasks[pid] = t
        order.append(t)
    _check_sessions(order)
    if "tty" in file_state:  # ptys of the dump that are controlling terminals need their sessions
        from .tty import check_sessions

        check_sessions(file_state, {t.pid for t in order if t.sid == t.pid and not t.zombie})
    own_time = root_time is not None and root_time != inv.root_ids.time_ns_id
    plan = RestorePlan(imgdir, inv, order, files, shmems, file_state, timens_id=root_time if own_time else 0,
                       own_ns=own_ns or {})
    _check_pids_free(plan)
    return plan


def _zombie_plan(pe: Message, core: Message) -> TaskPlan:
    """A zombie has only its core image (state, exit status, name), as CRIU dumps it: no memory, fds
    or namespaces to restore; it is created in its place in the tree and exits again."""
    mm = MmPlan([], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, [], "", None, False, 0)
    return TaskPlan(pid=pe.pid, ppid=pe.ppid, pgid=pe.pgid, sid=pe.sid, threads=[ThreadPlan(pe.pid, core)],
                    ids=None, mm=mm, fds=[], cwd="/", root="/", umask=0o022)


def _check_sessions(tasks: list[TaskPlan]) -> None:
    """Every session and process group must be creatable from the tree (as CRIU requires)."""
    by_pid = {t.pid: t for t in tasks}
    root = tasks[0]
    for t in tasks:
        if t is not root and t.sid != t.pid and t.sid not in by_pid and t.sid != root.sid:
            raise SpiceError("restore", f"task {t.pid}: session {t.sid} is outside the dumped tree")
        if t.pgid != t.pid and t.pgid not in by_pid and t.pgid != root.pgid:
            raise SpiceError("restore", f"task {t.pid}: process group {t.pgid} is outside the dumped tree")


def _check_pids_free(plan: RestorePlan) -> None:
    """The tree's pids are free here; in a pid namespace of the tree's own (made new by the restore)
    they are free by definition, and its root must be the namespace's init, as CRIU requires."""
    if "pid" in plan.own_ns:
        if plan.root.pid != 1:
            raise SpiceError("restore", f"the root task {plan.root.pid} lives in a pid namespace of its own "
                                        "but is not its init (pid 1)")
        return
    for tid in plan.all_ids():
        if os.path.exists(f"/proc/{tid}"):
            raise SpiceError("restore", f"pid {tid} is already taken by another process (the original still running?)")
