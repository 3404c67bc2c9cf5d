# SPDX-License-Identifier: MIT
"""The process tree as CRIU records it: pstree.img, in CRIU's order (root, then depth first).

Mirror of restore/tree.py. The tree is frozen by dump.seize; this module turns it into the task list
every other collector walks, and checks what spice can dump (no zombies, sessions and process groups
that the restore side can rebuild).

spice reads and seizes every task by its pid in our pid namespace (Task.pid, .tids: "host" pids);
the images hold the pids the tree sees (PidMap): in a tree with a pid namespace of its own (a
container, `unshare -p -f`), the ones of that namespace, whose init the root must be, as in CRIU.
"""

from __future__ import annotations

import os

from ..errors import SpiceError
from ..images import codec
from ..images.lite import Message
from . import proc
from .seize import FrozenTree

TASK_ALIVE, TASK_DEAD, TASK_STOPPED = 1, 2, 3


class Task:
    """One process of the dumped tree: pstree fields (ppid 0 for the root), threads (leader first),
    TASK_* state, and what the collectors attach to it."""

    def __init__(self, pid: int, ppid: int, pgid: int, sid: int, tids: list[int], state: int,
                 stop_signo: int = 0, stat: proc.Stat | None = None, exit_code: int = 0) -> None:
        self.pid, self.ppid, self.pgid, self.sid, self.tids, self.state = pid, ppid, pgid, sid, tids, state
        self.stop_signo, self.stat, self.exit_code = stop_signo, stat, exit_code
        self.children: list[Task] = []
        self.ids: Message | None = None
        self.cores: dict[int, Message] = {}

    @property
    def leader_core(self) -> Message:
        return self.cores[self.pid]


def collect(frozen: FrozenTree) -> list[Task]:
    """Tasks of the frozen tree, parents before children, depth first like CRIU's pstree walk."""
    tasks: dict[int, Task] = {}
    for pid, p in frozen.processes.items():
        if p.zombie:
            st = proc.stat(pid)
            tasks[pid] = Task(pid=pid, ppid=p.ppid, pgid=st.pgid, sid=st.sid, tids=[pid], state=TASK_DEAD,
                              stat=st, exit_code=st.exit_code)
            continue
        if p.dead_leader:
            raise SpiceError("dump", f"task {pid}: its main thread has exited (threads live on): not supported")
        st = proc.stat(pid)
        stopped = frozen.stopped(pid)
        tasks[pid] = Task(
            pid=pid,
            ppid=0 if pid == frozen.root else p.ppid,
            pgid=st.pgid,
            sid=st.sid,
            tids=list(p.threads),
            state=TASK_STOPPED if stopped else TASK_ALIVE,
            stop_signo=frozen.tasks[pid].stop_sig if stopped else 0,
            stat=st,
        )
    order: list[Task] = []

    def walk(pid: int) -> None:
        t = tasks[pid]
        order.append(t)
        for kid in frozen.processes[pid].children:
            if kid in tasks and kid not in (x.pid for x in t.children):
                t.children.append(tasks[kid])
                walk(kid)

    walk(frozen.root)
    return order


def _ns_ids(pid: int, tid: int | None = None) -> dict[str, int]:
    """The innermost of each NS* line of /proc/PID[/task/TID]/status (pid, tgid, pgid, sid)."""
    st = proc.status(pid, tid)
    return {k: int(st[k].split()[-1]) for k in ("NSpid", "NStgid", "NSpgid", "NSsid") if st.get(k)}


class PidMap:
    """Our pid of a task or thread (and of its group or session) -> the one the images hold: the
    same, unless the tree has a pid namespace of its own; then the one in that namespace, 0 for a
    process outside it (as the kernel shows those inside)."""

    def __init__(self, tasks: list[Task]) -> None:
        root = tasks[0]
        self.ns_ino = os.stat(f"/proc/{root.pid}/ns/pid").st_ino
        self.own = self.ns_ino != os.stat("/proc/self/ns/pid").st_ino
        self._map: dict[int, int] = {}
        if self.own:
            for t in tasks:
                self._map[t.pid] = _ns_ids(t.pid)["NSpid"]
                for tid in t.tids:
                    if tid != t.pid:
                        self._map[tid] = _ns_ids(t.pid, tid)["NSpid"]
            if self._map[root.pid] != 1:
                raise SpiceError("dump", "Can't dump a pid namespace without the process init "
                                         f"(the root {root.pid} is pid {self._map[root.pid]} in its pid namespace)")
        for t in tasks:
            if self(t.sid) == 0:
                raise SpiceError("dump", f"A session leader of {t.pid} is outside of its pid namespace")

    def __call__(self, pid: int) -> int:
        if not self.own or pid <= 0:
            return pid
        got = self._map.get(pid)
        if got is None:  # not a task of the tree: its pid in the tree's namespace, if it is in it
            try:
                inside = os.stat(f"/proc/{pid}/ns/pid").st_ino == self.ns_ino
                got = _ns_ids(pid)["NSpid"] if inside else 0
            except (OSError, SpiceError, KeyError):
                got = 0
            self._map[pid] = got
        return got


def zombie_core(t: Task) -> Message:
    """A zombie's core: just its task state, wait status and name (CRIU's dump_one_zombie)."""
    core = codec.pb("core_entry", lite=True)(mtype=1)
    tc = core.tc
    tc.task_state, tc.exit_code, tc.personality, tc.flags, tc.blk_sigset = TASK_DEAD, t.exit_code, 0, 0, 0
    tc.comm = t.stat.comm
    return core


def pstree_entries(tasks: list[Task], vpid: PidMap) -> list[Message]:
    cls = codec.pb("pstree_entry", lite=True)
    return [cls(pid=vpid(t.pid), ppid=vpid(t.ppid), pgid=vpid(t.pgid), sid=vpid(t.sid),
                threads=[vpid(tid) for tid in t.tids]) for t in tasks]
