# SPDX-License-Identifier: MIT
"""Kernel-object ids (ids-<pid>.img, inventory root_ids): equal ids mean a shared object.

CRIU numbers each kind of object (mm, fd table, fs, sighand) in the order it meets them, the dumping
process itself first (its ids are the inventory's root_ids), and tells shared objects apart with
kcmp(2). Namespaces are numbered in one sequence by their /proc/PID/ns inode, in CRIU's order, again
starting with the dumper's own. restore uses root_ids to decide which namespaces to recreate: a
namespace of the root task's that differs from ours is the tree's own, and goes in the images
(dump/namespaces.py) if spice can dump that kind, else the dump is refused naming it. Every other
task must share the root's namespaces (criu refuses nested ones too). The time namespace is one
such kind: every process criu restored lives in one of its own (criu restores each tree into a new
one, to keep its monotonic and boot clocks going on from the dump).
"""

from __future__ import annotations

import os

from ..errors import SpiceError
from ..images import codec
from ..images.lite import Message
from ..linux import kcmp
from . import namespaces

#: CRIU's namespace order (the order of its "Add <ns> ns" lines), with the ids field of each
NAMESPACES = (("pid", "pid_ns_id"), ("net", "net_ns_id"), ("ipc", "ipc_ns_id"), ("uts", "uts_ns_id"),
              ("time", "time_ns_id"), ("mnt", "mnt_ns_id"), ("user", "user_ns_id"),
              ("cgroup", "cgroup_ns_id"))
#: the kcmp-compared objects, in the order CRIU generates them
OBJECTS = (("vm_id", kcmp.KCMP_VM), ("fs_id", kcmp.KCMP_FS), ("files_id", kcmp.KCMP_FILES),
           ("sighand_id", kcmp.KCMP_SIGHAND))


def _ns_inode(pid: int, ns: str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/{ns}").st_ino
    except FileNotFoundError:
        return None  # a namespace kind this kernel lacks


class Ids:
    """Id generators for one dump."""

    def __init__(self) -> None:
        self._objs: dict[str, list[tuple[int, int]]] = {name: [] for name, _ in OBJECTS}  # (pid, id)
        self._ns: dict[tuple[str, int], int] = {}
        self._ns_next = 1
        self.root_ids = self.task_ids(os.getpid(), dumper=True)
        #: the root's namespaces, by kind: (ns id, the root's pid), once the root was seen
        self.tree_ns: dict[str, tuple[int, int]] = {}

    def _ns_id(self, ns: str, ino: int) -> int:
        key = (ns, ino)
        if key not in self._ns:
            self._ns[key] = self._ns_next
            self._ns_next += 1
        return self._ns[key]

    def _obj_id(self, name: str, kind: int, pid: int) -> int:
        seen = self._objs[name]
        for other, oid in seen:
            try:
                shared = kcmp.same(pid, other, kind)
            except OSError as e:
                raise SpiceError("dump", f"task {pid}: kcmp with {other} failed: {e.strerror}") from None
            if shared:
                if name != "files_id":  # CRIU can share only fd tables between processes
                    what = {"vm_id": "memory (CLONE_VM)", "fs_id": "fs (CLONE_FS)",
                            "sighand_id": "signal handlers (CLONE_SIGHAND)"}[name]
                    raise SpiceError("dump", f"task {pid} shares its {what} with "
                                             f"{'spice' if other == os.getpid() else f'task {other}'}: not supported")
                return oid
        oid = len({i for _, i in seen}) + 1
        seen.append((pid, oid))
        return oid

    def task_ids(self, pid: int, dumper: bool = False) -> Message:
        ids = codec.pb("task_kobj_ids_entry", lite=True)()
        for name, kind in OBJECTS:
            setattr(ids, name, self._obj_id(name, kind, pid))
        for ns, field in NAMESPACES:
            ino = _ns_inode(pid, ns)
            if ino is None:
                continue
            nsid = self._ns_id(ns, ino)
            if not dumper:
                self._check_ns(pid, ns, nsid)
            setattr(ids, field, nsid)
        return ids

    def _check_ns(self, pid: int, ns: str, nsid: int) -> None:
        """The first task asked about is the root (tasks are dumped parents first): its namespaces
        are the tree's; every other task must share them, and those not ours must be dumpable."""
        tree = self.tree_ns.setdefault(ns, (nsid, pid))
        if nsid != tree[0]:
            raise SpiceError("dump", f"task {pid} lives in its own {ns} namespace: not supported")
        if tree[1] == pid and nsid != getattr(self.root_ids, dict(NAMESPACES)[ns]) and ns not in namespaces.DUMPED:
            raise SpiceError("dump", f"task {pid} lives in its own {ns} namespace: not supported")

    def own_ns(self, ns: str) -> tuple[int, int] | None:
        """(id, root pid) of the tree's namespace of that kind if it is not ours (None: shares ours)."""
        tree = self.tree_ns.get(ns)
        if tree is None or tree[0] == getattr(self.root_ids, dict(NAMESPACES)[ns]):
            return None
        return tree

    @property
    def own_time_ns(self) -> tuple[int, int] | None:
        return self.own_ns("time")
