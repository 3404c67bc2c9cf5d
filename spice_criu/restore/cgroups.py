# SPDX-License-Identifier: MIT
"""Tasks back into the cgroups they were dumped in: CRIU's --manage-cgroups (default soft).

cgroup.img (written only when some task lived outside the dumper's own cgroups) lists cgroup sets:
per hierarchy ("" is cgroup2, else the v1 controller names) the path a task was in. A task whose
cg_set is the dumper's own set (inventory root_cg_set) stays where the restorer is, as in CRIU;
any other task is written into cgroup.procs of each of its set's directories, right after the tree
is created (threads are cloned later and follow their process). Missing directories are created
(except in mode none), and, as CRIU's soft mode does, only those get the dumped properties and
permissions. --cgroup-root [CTL:]PATH (runc passes one per hierarchy, where it put the restorer)
moves the dumped top directory of a hierarchy there. Everything a restore needs is checked (image,
mounted hierarchies, --cgroup-root, in mode none that the cgroups exist) before any task exists.
"""

from __future__ import annotations

import os

from ..errors import ImageError, SpiceError
from ..images.imagedir import ImageDir
from ..log import log

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..images.lite import Message
    from .plan import RestorePlan

MODES = ("none", "props", "soft", "full", "strict", "ignore")
#: properties that are not settings: membership lists, read-only state, or (devices.list) a list
#: the kernel takes back only as devices.allow/deny writes; v2's default type and an empty subtree
_NOT_SETTINGS = {"cgroup.procs", "tasks", "cgroup.threads", "devices.list", "cgroup.events",
                 "cgroup.controllers", "cgroup.stat"}


class Move:
    """One task into one hierarchy's directory: `path` (absolute, on this host), under `mount`;
    `dumped`: the dumped directory entry (properties, permissions) of it and of its parents, by
    host path, for the ones the restore has to create."""

    def __init__(self, pid: int, hierarchy: str, mount: str, path: str, dumped: dict[str, Message]) -> None:
        self.pid, self.hierarchy, self.mount, self.path, self.dumped = pid, hierarchy, mount, path, dumped


def _roots(specs: list[str]) -> dict[str, str]:
    """--cgroup-root [CTL:]/PATH -> {CTL or "": PATH} ("" also the default for every hierarchy)."""
    out = {}
    for s in specs:
        ctl, sep, path = s.rpartition(":")
        if not path.startswith("/"):
            raise SpiceError("cgroups", f"--cgroup-root {s}: the root must be an absolute path")
        out[ctl if sep else ""] = path
    return out


def _top_dirs(entry: Message) -> dict[str, Message]:
    """Hierarchy -> its dumped top directory (controllers[].dirs[0]): the prefix --cgroup-root moves."""
    out = {}
    for c in entry.controllers:
        if c.dirs:
            out[",".join(c.cnames)] = c.dirs[0]
    return out


def _dir_entry(entry: Message, hierarchy: str, rel: str) -> Message | None:
    """The dumped cgroup_dir_entry of `rel` (a path relative to the hierarchy root, no leading /):
    a top dir names its whole path, children their own name."""
    for c in entry.controllers:
        if ",".join(c.cnames) != hierarchy and hierarchy not in c.cnames:
            continue
        todo = [(d.dir_name.strip("/"), d) for d in c.dirs]
        while todo:
            name, d = todo.pop()
            if name == rel:
                return d
            if not name or rel.startswith(name + "/"):
                todo += [(f"{name}/{ch.dir_name}".strip("/"), ch) for ch in d.children]
    return None


def plan_moves(plan: RestorePlan, mode: str | None, roots: list[str]) -> list[Move]:
    """What to move where; [] when nothing lives outside the dumper's cgroups or mode is ignore."""
    mode = mode or "soft"
    if mode not in MODES:
        raise SpiceError("cgroups", f"--manage-cgroups {mode}: unknown mode (one of {', '.join(MODES)})")
    if mode == "ignore":
        return []
    if mode in ("props", "full", "strict"):
        raise SpiceError("cgroups", f"--manage-cgroups {mode}: not supported (spice restores cgroup properties "
                                    "only of the cgroups it creates: modes soft, none, ignore)")
    imgdir: ImageDir = plan.imgdir
    own = plan.inventory.root_cg_set if plan.inventory.HasField("root_cg_set") else 0
    wanted = {}
    for t in plan.tasks:
        if t.zombie:
            continue
        ids = {_cg_set(th.core) for th in t.threads}
        if len(ids) > 1:
            raise SpiceError("cgroups", f"task {t.pid}: its threads are in different cgroup sets {sorted(ids)}: "
                                        "not supported")
        cg_set = _cg_set(t.leader.core)
        if cg_set and cg_set != own:
            wanted[t.pid] = cg_set
    entry = imgdir.one("cgroup.img", optional=True)
    if not wanted:
        return []
    if entry is None:
        raise ImageError(imgdir / "cgroup.img", f"missing, but tasks {sorted(wanted)} are in cgroup sets "
                                                f"{sorted(set(wanted.values()))} (not the dumper's set {own})")
    from .. import cgroupfs  # only when some task moves

    sets = {s.id: s for s in entry.sets}
    with open("/proc/self/mountinfo") as f:
        host = cgroupfs.mounts(f.read())
    new_roots = _roots(roots)
    tops = _top_dirs(entry)
    moves = []
    for pid, set_id in wanted.items():
        cg_set = sets.get(set_id)
        if cg_set is None:
            raise ImageError(imgdir / "cgroup.img", f"no cgroup set {set_id} (task {pid})")
        for member in cg_set.ctls:
            hierarchy = member.name
            if not cgroupfs.mounted(hierarchy, host):
                raise SpiceError("cgroups", f"task {pid}: cgroup hierarchy {hierarchy or 'cgroup2'} "
                                            "is not mounted here")
            path = "/" + _rebase(member.path, hierarchy, tops, new_roots).strip("/")
            found = cgroupfs.locate(hierarchy, path, host)
            if found is None:
                raise SpiceError("cgroups", f"task {pid}: cgroup {hierarchy or 'cgroup2'}:{path} is outside the "
                                            "part of the hierarchy mounted here")
            mount, target = found
            if mode == "none" and not os.path.isdir(target):
                raise SpiceError("cgroups", f"task {pid}: cgroup {target} does not exist "
                                            "(--manage-cgroups none creates none)")
            dumped = {} if mode == "none" else _dumped_dirs(entry, hierarchy, target, mount, member.path)
            moves.append(Move(pid, hierarchy, mount, target, dumped))
    return moves


def _dumped_dirs(entry: Message, hierarchy: str, host: str, mount: str, path: str) -> dict[str, Message]:
    """Host directory -> dumped entry, from the task's directory up, as far as both paths go."""
    out = {}
    while host != mount and path.strip("/"):
        d = _dir_entry(entry, hierarchy, path.strip("/"))
        if d is not None:
            out[host] = d
        host, path = os.path.dirname(host), os.path.dirname(path.rstrip("/"))
    return out


def _cg_set(core: Message) -> int:
    """A thread's cgroup set: thread_core.cg_set (CRIU 4), else the leader's deprecated tc.cg_set."""
    if core.HasField("thread_core") and core.thread_core.HasField("cg_set"):
        return core.thread_core.cg_set
    return core.tc.cg_set if core.HasField("tc") and core.tc.HasField("cg_set") else 0


def _rebase(path: str, hierarchy: str, tops: dict[str, Message], roots: dict[str, str]) -> str:
    """CRIU's --cgroup-root: the hierarchy's dumped top directory is replaced by the new root."""
    new = next((roots[n] for n in hierarchy.split(",") if n in roots), None) or roots.get(hierarchy) or roots.get("")
    if new is None:
        return path
    top = tops.get(hierarchy)
    prefix = "/" + top.dir_name.strip("/") if top is not None else "/"
    rest = path[len(prefix):] if path == prefix or path.startswith(prefix.rstrip("/") + "/") else ""
    return new.rstrip("/") + "/" + rest.strip("/") if rest.strip("/") else new


def apply(moves: list[Move], created: list[str]) -> None:
    """Create what is missing (appended to `created`, to undo), then move each process in."""
    for mv in moves:
        if not os.path.isdir(mv.path):
            _create(mv, created)
        try:
            with open(os.path.join(mv.path, "cgroup.procs"), "w") as f:
                f.write(str(mv.pid))
        except OSError as e:
            raise SpiceError("cgroups", f"task {mv.pid}: can't move it into {mv.path}: {e.strerror}") from None
        log.debug(f"task {mv.pid} moved into {mv.path}")


def _create(mv: Move, created: list[str]) -> None:
    """mkdir -p, each new directory (parents first: a v1 cpuset child needs its parent's cpus and
    mems) with its dumped permissions and properties."""
    missing = []
    p = mv.path
    while not os.path.isdir(p) and p != mv.mount:
        missing.append(p)
        p = os.path.dirname(p)
    for d in reversed(missing):
        try:
            os.mkdir(d)
        except OSError as e:
            raise SpiceError("cgroups", f"can't create cgroup {d}: {e.strerror}") from None
        created.append(d)
        log.info(f"created cgroup {d}")
        dumped = mv.dumped.get(d)
        if dumped is None:
            continue
        if dumped.HasField("dir_perms"):
            _own(d, dumped.dir_perms)
        for prop in dumped.properties:
            if prop.name in _NOT_SETTINGS or (prop.name == "cgroup.type" and prop.value == "domain"):
                continue
            _set_property(d, prop)


def _set_property(path: str, prop: Message) -> None:
    target = os.path.join(path, prop.name)
    value = prop.value
    if prop.name == "cgroup.subtree_control":
        value = " ".join("+" + c for c in value.split())
        if not value:
            return
    try:
        with open(target, "w") as f:
            f.write(value)
    except OSError as e:
        current = _read(target)
        if current is not None and current.strip() == prop.value.strip():
            return  # already so (a value the kernel refuses to be re-set to, e.g. some defaults)
        raise SpiceError("cgroups", f"can't set {target} to {prop.value!r}: {e.strerror}") from None
    if prop.HasField("perms"):
        _own(target, prop.perms)


def _own(path: str, perms: Message) -> None:
    st = os.stat(path)
    if (st.st_uid, st.st_gid) != (perms.uid, perms.gid):
        os.chown(path, perms.uid, perms.gid)
    if st.st_mode & 0o7777 != perms.mode & 0o7777:
        os.chmod(path, perms.mode & 0o7777)


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def undo(created: list[str]) -> None:
    """Remove the directories a failed restore created (deepest first; best effort)."""
    for d in reversed(created):
        try:
            os.rmdir(d)
        except OSError:
            pass
    created.clear()
