# SPDX-License-Identifier: MIT
"""cgroup.img and every thread's cg_set, as CRIU 4.2.1 writes them.

A cgroup set is the list of (hierarchy, path) pairs a thread lives in (/proc/PID/task/TID/cgroup,
sorted by hierarchy name; "" is the cgroup2 hierarchy, "cpu,cpuacct" a co-mounted v1 one, and
"name=systemd" a named one). The dumper's own set is set 1 (inventory root_cg_set); every other
distinct set gets the next id in the order the threads are met (tasks in pstree order, each
leader before its other threads), and the id goes into the thread's thread_core.cg_set.

When every thread is in the dumper's set nothing more is written. Otherwise cgroup.img holds one
cgroup_entry: `sets`, the other sets; `controllers`, one per hierarchy of the dumper's
/proc/self/cgroup (in that file's order, named hierarchies appended as the sets meet them), each
with the directory of every path the sets use and the whole subtree below it (readdir order,
depth first), with the properties CRIU knows for the hierarchy, then the generic ones, that exist
on this kernel. A directory already dumped is not dumped again; one below a dumped directory
becomes its child, any other a head of the hierarchy's list; dir_name is a head's path without
its leading "/" ("" for a hierarchy's root) and a child's path relative to its parent.

CRIU mounts each hierarchy itself to walk it; spice walks the mount of it this host already has
(cgroupfs.locate) and fails naming the hierarchy when there is none.
"""

from __future__ import annotations

import os

from .. import cgroupfs
from ..errors import SpiceError
from ..images import codec
from ..log import log
from . import proc

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ..images.lite import Message

#: the properties CRIU dumps per v1 controller (its built-in cgroup-props), in its order
PROPS: dict[str, tuple[str, ...]] = {
    "cpu": ("cpu.shares", "cpu.cfs_period_us", "cpu.cfs_quota_us", "cpu.rt_period_us", "cpu.rt_runtime_us"),
    "memory": ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes", "memory.swappiness",
               "memory.soft_limit_in_bytes", "memory.move_charge_at_immigrate", "memory.oom_control",
               "memory.use_hierarchy", "memory.kmem.limit_in_bytes", "memory.kmem.tcp.limit_in_bytes"),
    "cpuset": ("cpuset.cpus", "cpuset.mems", "cpuset.memory_migrate", "cpuset.cpu_exclusive",
               "cpuset.mem_exclusive", "cpuset.mem_hardwall", "cpuset.memory_spread_page",
               "cpuset.memory_spread_slab", "cpuset.sched_load_balance", "cpuset.sched_relax_domain_level"),
    "blkio": ("blkio.weight",),
    "net_cls": ("net_cls.classid",),
    "net_prio": ("net_prio.ifpriomap",),
    "pids": ("pids.max",),
    "devices": ("devices.list",),
}
#: dumped in every directory after the hierarchy's own properties
GLOBAL_V1 = ("cgroup.clone_children", "notify_on_release", "cgroup.procs", "tasks")
GLOBAL_V2 = ("cgroup.subtree_control", "cgroup.max.descendants", "cgroup.max.depth", "cgroup.freeze",
             "cgroup.type")
#: membership lists: only their permissions are kept, the value is written empty
_MEMBERSHIP = ("cgroup.procs", "tasks")
_LLONG_MAX = (1 << 63) - 1
_EXACT, _PARENT, _NONE = range(3)

CgSet = tuple[tuple[str, str], ...]  # ((hierarchy name, path), ...) sorted by name


def parse(text: str) -> CgSet:
    """A /proc/PID/cgroup file as a cgroup set."""
    ctls = []
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            ctls.append((parts[1], parts[2]))
    return tuple(sorted(ctls))


class Dir:
    """One cgroup directory of a hierarchy, as CRIU's struct cgroup_dir."""

    __slots__ = ("path", "st", "props", "children")

    def __init__(self, path: str, st: os.stat_result) -> None:
        self.path, self.st = path, st
        self.props: list[tuple[str, str, os.stat_result]] = []
        self.children: list[Dir] = []


class Hierarchy:
    """One cg_controller_entry: the controller names of a hierarchy and the directories dumped."""

    __slots__ = ("names", "heads", "is_threaded")

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.heads: list[Dir] = []
        self.is_threaded = False

    @property
    def v2(self) -> bool:
        return self.names == [""]

    def holds(self, name: str) -> bool:
        """CRIU's cgroup_contains: a set member of this hierarchy (every controller of it named)."""
        if self.v2:
            return name == ""
        toks = name.split(",")
        return all(n in toks for n in self.names)


def hierarchies(own_cgroup: str) -> list[Hierarchy]:
    """The dumper's hierarchies, as CRIU's collect_controllers: one per /proc/self/cgroup line, in
    its order, named-only ones left out (they are added when a set uses them)."""
    out = []
    for line in own_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        names = [n for n in parts[1].split(",") if not n.startswith("name=")]
        if names:
            out.append(Hierarchy(names))
    return out


def _value(raw: bytes) -> str:
    """A property's value as CRIU keeps it: the first read (up to 1023 bytes) as a C string, "-1" if it
    reads as LLONG_MAX (strtoll saturates), one trailing newline dropped."""
    s = raw.split(b"\0", 1)[0].decode("utf-8", "replace")
    t = s.lstrip(" \t\n\v\f\r")
    sign = 1
    if t[:1] in ("+", "-"):
        sign, t = (-1 if t[0] == "-" else 1), t[1:]
    n = 0
    for ch in t:
        if not "0" <= ch <= "9":
            break
        n = n * 10 + ord(ch) - 48
        if n > _LLONG_MAX:
            break
    if sign > 0 and n >= _LLONG_MAX:
        return "-1"
    return s[:-1] if s.endswith("\n") else s


def _oom_kill_disable(value: str, path: str) -> str:
    head, _, rest = value.partition("oom_kill_disable ")
    num = rest.split(None, 1)[0] if rest.strip() else ""
    if head or not num.lstrip("+-").isdigit():
        raise SpiceError("dump", f"couldn't scan oom state from {path}: {value!r}")
    return str(int(num))


class Cgroups:
    """The cgroup sets of one dump: ids for threads as they are met, then cgroup.img."""

    def __init__(self, manage_cgroups: str | None = None) -> None:
        me = os.getpid()
        self._own_text = proc.read_text(f"/proc/{me}/task/{me}/cgroup", "spice")
        self.own = parse(self._own_text)
        #: set -> id, in id order; the dumper's own set is 1
        self.ids: dict[CgSet, int] = {self.own: 1}
        self.walk = manage_cgroups != "ignore"  # CRIU's CG_MODE_IGNORE dumps no directories

    def thread_set(self, pid: int, tid: int) -> int:
        """The cg_set id of a thread (a new id for a set not met yet)."""
        cs = parse(proc.read_text(f"/proc/{pid}/task/{tid}/cgroup", f"thread {tid}"))
        cid = self.ids.get(cs)
        if cid is None:
            cid = self.ids[cs] = len(self.ids) + 1
            log.debug(f"cg: thread {tid}: new cgroup set {cid}: {cs}")
        return cid

    def entry(self) -> Message | None:
        """cgroup.img's entry, or None when every thread was in the dumper's own set (CRIU writes
        no cgroup.img then)."""
        if len(self.ids) == 1:
            log.info("cg: all tasks in spice's cgroups, no cgroup.img")
            return None
        hier = hierarchies(self._own_text)
        mnts = cgroupfs.mounts(proc.read_text("/proc/self/mountinfo", "spice")) if self.walk else []
        for cs, cid in self.ids.items():
            if cid == 1:
                continue
            for name, path in cs:
                h = next((h for h in hier if h.holds(name)), None)
                if h is None:
                    if not name.startswith("name="):
                        raise SpiceError("dump", f"cgroup controller {name} of set {cid} not found")
                    h = Hierarchy([name])
                    hier.append(h)
                if self.walk:
                    self._walk(h, name, path, mnts)
        return self._message(hier)

    # ------------------------------------------------------------------------------- directories

    def _walk(self, h: Hierarchy, name: str, path: str, mnts: list[cgroupfs.Mount]) -> None:
        """Every directory from path down (CRIU's ftw over a fresh mount of the hierarchy)."""
        found = cgroupfs.locate(name, path, mnts)
        if found is None:
            raise SpiceError("dump", f"cgroup {name or 'v2'}:{path}: the hierarchy is not mounted where spice can "
                                     "read it")
        top = found[1]
        try:
            st = os.stat(top)
        except OSError as e:
            raise SpiceError("dump", f"cgroup {name or 'v2'}:{path}: cannot walk {top}: {e.strerror}") from None
        self._visit(h, top, path, st)

    def _visit(self, h: Hierarchy, fpath: str, path: str, st: os.stat_result) -> None:
        self._add(h, fpath, path, st)
        try:
            it = os.scandir(fpath)
        except OSError:
            return  # ftw reports an unreadable directory as FTW_DNR, which CRIU ignores
        with it:
            subdirs = []
            for e in it:
                try:
                    if e.is_dir():
                        subdirs.append((e.path, e.name, e.stat()))
                except OSError:
                    continue
        for sub, base, sst in subdirs:
            self._visit(h, sub, (path if path != "/" else "") + "/" + base, sst)

    def _add(self, h: Hierarchy, fpath: str, path: str, st: os.stat_result) -> None:
        kind, match = _find_dir(path, h.heads)
        if kind == _EXACT:
            return  # already dumped (by another set, or a co-mounted hierarchy)
        d = Dir(path, st)
        for cname in h.names:
            for prop in PROPS.get(cname, ()):
                self._prop(h, d, fpath, prop)
        for prop in GLOBAL_V2 if h.names[0] == "" else GLOBAL_V1:
            self._prop(h, d, fpath, prop)
        (match.children if kind == _PARENT else h.heads).append(d)

    @staticmethod
    def _prop(h: Hierarchy, d: Dir, fpath: str, name: str) -> None:
        p = fpath + "/" + name
        try:
            fd = os.open(p, os.O_RDONLY)
        except FileNotFoundError:
            return  # not on this kernel
        except OSError as e:
            raise SpiceError("dump", f"cgroup property {p}: {e.strerror}") from None
        try:
            st = os.fstat(fd)
            value = "" if name in _MEMBERSHIP else _value(os.read(fd, 1023))
        except OSError as e:
            raise SpiceError("dump", f"cgroup property {p}: {e.strerror}") from None
        finally:
            os.close(fd)
        if name == "memory.oom_control":
            value = _oom_kill_disable(value, p)
        if name == "tasks" or (name == "cgroup.type" and value == "threaded"):
            h.is_threaded = True
        d.props.append((name, value, st))

    # ---------------------------------------------------------------------------------- the image

    def _message(self, hier: list[Hierarchy]) -> Message:
        e = codec.pb("cgroup_entry", lite=True)()
        for cs, cid in self.ids.items():
            if cid == 1:
                continue
            s = e.sets.add(id=cid)
            for name, path in cs:
                s.ctls.add(name=name, path=path)
        for h in hier:
            c = e.controllers.add()
            c.cnames.extend(h.names)
            _dirs(c.dirs, h.heads, 0)
            c.is_threaded = h.is_threaded
        return e


def _below(path: str, parent: str) -> bool:
    return path.startswith(parent) and (parent.endswith("/") or path[len(parent):len(parent) + 1] == "/")


def _find_dir(path: str, dirs: list[Dir]) -> tuple[int, Dir | None]:
    """CRIU's find_dir: the directory itself, or the deepest dumped one it is below (by whole path
    components: CRIU 4.2.1 keeps /X0 apart from /X)."""
    for d in dirs:
        if d.path == path:
            return _EXACT, d
        if _below(path, d.path):
            kind, m = _find_dir(path, d.children)
            return (_PARENT, d) if kind == _NONE else (kind, m)
    return _NONE, None


def _perms(msg: Message, st: os.stat_result) -> None:
    msg.mode, msg.uid, msg.gid = st.st_mode, st.st_uid, st.st_gid


def _dirs(out: Any, dirs: list[Dir], poff: int) -> None:
    for d in dirs:
        # CRIU's dump_cg_dirs: the path past the parent's, without its leading "/"
        de = out.add(dir_name=d.path[poff:] if poff == 1 else d.path[poff + 1:])
        _dirs(de.children, d.children, len(d.path))
        for name, value, st in d.props:
            p = de.properties.add(name=name, value=value)
            _perms(p.perms, st)
        _perms(de.dir_perms, d.st)
