# SPDX-License-Identifier: MIT
"""The tree's mount namespace made again, as CRIU 4.2's prepare_mnt_ns does for a container.

The root is cloned into a new mount namespace (CLONE_NEWNS): a copy of the restorer's. Before any
other task exists, a short-lived helper joins it (and the root's other new namespaces: proc, sysfs
and mqueue show the mounter's pid, net and ipc namespaces) and builds mountpoints-<id>.img's tree
on the --root directory (runc's RPC root: the container's rootfs): the root mount is a bind of it,
then parents before children, each mount either

* external (ext_key): a bind of what the restore's `--external mnt[KEY]:PATH` (RPC ext_mnt) names,
* a bind of a mount made before on the same device (proc's /sys, /bus..., a tmpfs file),
* or a new mount of its filesystem with its options, a tmpfs filled from tmpfs-dev-<dev>.tar.gz.img;

then the read-only remounts, and pivot_root into it, which moves the root task's root and cwd too.
From then on the restorer reaches the tree's paths through /proc/<root>/root (ctx.root).
"""

from __future__ import annotations

import ctypes
import os
import subprocess

from ..errors import ImageError, SpiceError
from ..linux.setns import NsCallError, call_in
from ..mountinfo import mnt_externals

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..images.lite import Message
    from .files import OpenContext
    from .plan import RestorePlan
    from .task import TaskCtl

FSNAMES = {1: "proc", 2: "sysfs", 3: "devtmpfs", 4: "binfmt_misc", 5: "tmpfs", 6: "devpts", 8: "pstore",
           9: "securityfs", 10: "fusectl", 11: "debugfs", 12: "cgroup", 14: "mqueue", 19: "tracefs", 23: "cgroup2"}
TMPFS = 5
MS_RDONLY, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 0x1, 0x20, 0x1000, 0x4000, 0x40000
MNT_FLAGS = 0x1 | 0x2 | 0x4 | 0x8 | 0x400 | 0x800 | 0x200000 | 0x1000000  # ro nosuid nodev noexec *atime
MNT_DETACH = 2
NR_PIVOT_ROOT = 155
TAR = ["tar", "--extract", "--gzip", "--no-unquote", "--no-wildcards"]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _enc(s: str | None) -> bytes | None:
    return None if s is None else os.fsencode(s)


def _mount(src: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = _enc
    if _libc().mount(enc(src), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount({src}, {target}, {fstype}, {flags:#x}, {data!r}): {os.strerror(err)}")


def _umount(target: str) -> None:
    if _libc().umount2(os.fsencode(target), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"umount2({target}): {os.strerror(err)}")


def _pivot_root(new_root: str) -> None:
    os.chdir(new_root)
    if _libc().syscall(NR_PIVOT_ROOT, b".", b".") != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"pivot_root({new_root}): {os.strerror(err)}")
    _umount(".")
    os.chdir("/")


def _mountpoint(path: str, like: str | None) -> None:
    """Make the mount point if it is missing: a file to bind a file over, else a directory."""
    if os.path.lexists(path):
        return
    if like is not None and not os.path.isdir(like):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600))
    else:
        os.makedirs(path, exist_ok=True)


def order(entries: list[Message]) -> list[Message]:
    """Parents before children (criu's image lists the last mounted first), the root first."""
    ids = {e.mnt_id for e in entries}
    roots = [e for e in entries if e.parent_mnt_id not in ids or e.parent_mnt_id == e.mnt_id]
    top = {id(e) for e in roots}
    kids: dict[int, list[Message]] = {}
    for e in reversed(entries):
        if id(e) not in top:
            kids.setdefault(e.parent_mnt_id, []).append(e)
    out, todo = [], list(roots)
    while todo:
        e = todo.pop(0)
        out.append(e)
        todo[0:0] = kids.get(e.mnt_id, [])
    return out


def check(plan: RestorePlan, entries: list[Message], ext: dict[str, str], name: str) -> None:
    """What this restore cannot make, refused by name before anything is mounted."""
    tops = [e for e in entries if e.mountpoint == "/"]
    if len(tops) != 1:
        raise ImageError(plan.imgdir / name, "no single root mount")
    for e in entries:
        what = f"mount {e.mnt_id} at {e.mountpoint}"
        if e.shared_id or e.master_id:
            raise SpiceError("restore", f"{what}: shared/slave mount propagation is not supported")
        if e.HasField("ext_key"):
            if e.ext_key not in ext:
                raise SpiceError("restore", f"{what} is external ({e.ext_key}): give it with "
                                            f"--external mnt[{e.ext_key}]:PATH")
        elif e is not tops[0] and e.fstype not in FSNAMES:
            raise SpiceError("restore", f"{what}: filesystem type {e.fstype} ({e.source}) is not supported")


def _build(entries: list[Message], new_root: str, ext: dict[str, str], imgdir: str) -> None:
    """In the new namespace: the tree on new_root, then pivot_root into it."""
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    made: list[tuple[Message, str]] = []
    late: list[tuple[str, int]] = []
    for e in order(entries):
        target = new_root if e.mountpoint == "/" else os.path.join(new_root, e.mountpoint.lstrip("/"))
        fresh = False
        if e.mountpoint == "/":
            src: str | None = new_root
        elif e.HasField("ext_key"):
            src = ext[e.ext_key]
        else:
            src = next((os.path.join(p, os.path.relpath(e.root, m.root)) for m, p in made
                        if m.root_dev == e.root_dev and m.fstype == e.fstype
                        and (m.root == "/" or e.root == m.root or e.root.startswith(m.root + "/"))), None)
            fresh = src is None
        if fresh:
            _mountpoint(target, None)
            fs = FSNAMES[e.fstype]
            where = target if e.root == "/" else os.path.join(new_root, ".spice-mnt")
            if where != target:
                os.makedirs(where, exist_ok=True)
            _mount(e.source, where, fs, (e.flags & MNT_FLAGS & ~MS_RDONLY) | (e.sb_flags & ~MS_RDONLY),
                   e.options or None)
            tar = os.path.join(imgdir, f"tmpfs-dev-{e.root_dev}.tar.gz.img")
            if e.fstype == TMPFS and os.path.exists(tar):
                r = subprocess.run([*TAR, "--directory", where, "-f", tar], capture_output=True, check=False)
                if r.returncode:
                    raise OSError(0, f"tar -x {tar}: {r.stderr.decode(errors='replace').strip()}")
            if e.sb_flags & MS_RDONLY:
                _mount(None, where, None, MS_REMOUNT | e.sb_flags, e.options or None)
            if where != target:
                _mount(os.path.join(where, e.root.lstrip("/")), target, None, MS_BIND)
                _umount(where)
                os.rmdir(where)
            if e.flags & MS_RDONLY:
                late.append((target, e.flags & MNT_FLAGS))
        else:
            _mountpoint(target, src)
            _mount(src, target, None, MS_BIND)
            late.append((target, e.flags & MNT_FLAGS))
        made.append((e, target))
    for target, flags in reversed(late):  # read-only last: nothing is made under them any more
        _mount(None, target, None, MS_REMOUNT | MS_BIND | flags)
    _pivot_root(new_root)


def _in_pid_ns(fn: object) -> None:
    """fn run by a child of ours: after setns() into a pid namespace only our children are in it."""
    r, w = os.pipe2(os.O_CLOEXEC)
    child = os.fork()
    if child == 0:  # pragma: no cover - reported through the pipe
        os.close(r)
        try:
            fn()  # type: ignore[operator]
            os._exit(0)
        except BaseException as e:  # noqa: BLE001
            os.write(w, (e.strerror if isinstance(e, OSError) and e.strerror else str(e)).encode()[:4000])
            os._exit(1)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        msg = f.read().decode(errors="replace")
    _, status = os.waitpid(child, 0)
    if status:
        raise OSError(0, msg or f"the mount helper died (wait status {status:#x})")


def setup(plan: RestorePlan, root: TaskCtl, ctx: OpenContext) -> None:
    ns_id = plan.own_ns["mnt"]
    name = f"mountpoints-{ns_id}.img"
    entries = list(plan.imgdir.entries(name, optional=False))
    new_root = os.path.abspath(getattr(ctx.options, "root", None) or "/")
    if new_root == "/":
        raise SpiceError("restore", f"the tree has its own mount namespace ({name}): give its root with --root")
    ext = mnt_externals(list(getattr(ctx.options, "external", None) or []))  # key -> path
    check(plan, entries, ext, name)
    kinds = tuple(k for k in ("net", "ipc", "uts", "pid") if k in plan.own_ns) + ("mnt",)
    imgdir = os.path.abspath(plan.imgdir.path)

    def build() -> None:
        _build(entries, new_root, ext, imgdir)

    try:
        call_in(root.pid, kinds, (lambda: _in_pid_ns(build)) if "pid" in kinds else build)
    except (OSError, NsCallError) as e:
        raise SpiceError("restore", f"mount namespace of task {root.pid}: {e}") from None
    ctx.root = f"/proc/{root.pid}/root"
    # the tasks open the images and files by our paths (backends/common.py open_mm_files): from our root
    host_root = os.open("/", os.O_PATH | os.O_CLOEXEC)
    ctx.cache["mntns"] = {"host_root": host_root, "pid": root.pid}  # (restore/sockets.py binds in there)
    ctx.cleanup.append(lambda: os.close(host_root))
