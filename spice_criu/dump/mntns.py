# SPDX-License-Identifier: MIT
"""The tree's own mount namespace in the images, as CRIU 4.2's dump_mnt_ns writes it.

mountpoints-<id>.img: every mount of the root task's mountinfo, last first (CRIU's list order), with
its mnt id, parent id, device, the mounted part of its filesystem (root), the mount point as seen
from the namespace's root, criu's fstype number, source, superblock options (ro/rw, sync... go to
sb_flags), per-mount flags (MS_RDONLY, MS_NOSUID... MS_STRICTATIME when neither relatime nor
noatime), shared/master peer group ids, and the key of mounts declared external
(`--external mnt[MOUNTPOINT]:KEY`, runc's RPC ext_mnt: bind mounts of the host's files and
directories, which the restorer's caller binds again from wherever KEY says). The root mount is
the container's rootfs: the restore's --root.

tmpfs-dev-<dev>.tar.gz.img: the content of each tmpfs that is not external (/dev, /dev/shm, the
masked directories...), one archive per superblock, made with CRIU's tar options from a detached
copy of the mount alone (what is mounted on it left out, as criu does). Filesystems CRIU cannot remount from
nothing (a disk below the root, fuse...) are refused by name, as CRIU does.
"""

from __future__ import annotations

import ctypes
import os
import socket
import subprocess

from .. import mountinfo
from ..errors import SpiceError
from ..images import codec
from ..linux.setns import CLONE_NEWNS, setns
from ..linux.syscalls import syscall
from .files import kdev

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .run import DumpContext

#: criu's fstype numbers (images/mnt.proto) for the filesystems spice knows how to mount again
FSTYPES = {"proc": 1, "sysfs": 2, "devtmpfs": 3, "binfmt_misc": 4, "tmpfs": 5, "devpts": 6, "pstore": 8,
           "securityfs": 9, "fusectl": 10, "debugfs": 11, "cgroup": 12, "mqueue": 14, "tracefs": 19,
           "cgroup2": 23}
TMPFS = 5
MNT_FLAGS = {"ro": 0x1, "nosuid": 0x2, "nodev": 0x4, "noexec": 0x8, "noatime": 0x400, "nodiratime": 0x800,
             "relatime": 0x200000}
SB_FLAGS = {"ro": 0x1, "sync": 0x10, "mand": 0x40, "dirsync": 0x80, "lazytime": 0x2000000}
MS_STRICTATIME = 0x1000000
NR_OPEN_TREE, AT_FDCWD, OPEN_TREE_CLONE, OPEN_TREE_CLOEXEC = 428, -100, 1, 0o2000000
TAR = ["tar", "--create", "--gzip", "--no-unquote", "--no-wildcards", "--one-file-system", "--check-links",
       "--preserve-permissions", "--sparse", "--numeric-owner"]


def mnt_flags(opts: list[str]) -> int:
    flags = 0
    for o in opts:
        flags |= MNT_FLAGS.get(o, 0)
    if not flags & (MNT_FLAGS["noatime"] | MNT_FLAGS["relatime"]):
        flags |= MS_STRICTATIME
    return flags


def sb_options(m: mountinfo.Mount) -> tuple[int, str]:
    """(sb_flags, options) as criu splits the superblock options."""
    flags, rest = 0, []
    for o in m.sb_opts:
        if o in SB_FLAGS:
            flags |= SB_FLAGS[o]
        elif o != "rw":
            rest.append(o)
    if m.fstype == "devpts" and "newinstance" not in rest:
        rest.append("newinstance")  # every devpts mount is its own instance since 4.7: criu says so
    return flags, ",".join(rest)


def _entry(m: mountinfo.Mount, root_id: int, ext: dict[str, str]) -> object:
    key = ext.get(m.mountpoint)
    fstype = FSTYPES.get(m.fstype)
    if fstype is None:
        if m.mnt_id != root_id and key is None:
            raise SpiceError("dump", f"mount {m.mnt_id} at {m.mountpoint} of the tree's mount namespace: "
                                     f"{m.fstype} ({m.source}) is not supported (declare it external: "
                                     f"--external mnt[{m.mountpoint}]:KEY)")
        fstype = 0
    sb_flags, options = sb_options(m)
    e = codec.pb("mnt_entry", lite=True)(
        fstype=fstype, mnt_id=m.mnt_id, root_dev=kdev(os.makedev(m.major, m.minor)), parent_mnt_id=m.parent_id,
        flags=mnt_flags(m.mnt_opts), root=m.root, mountpoint=m.mountpoint, source=m.source, options=options,
        shared_id=m.optional.get("shared", 0), master_id=m.optional.get("master", 0), sb_flags=sb_flags)
    if key is not None:
        e.ext_key = key
    return e


def _clone_mount(pid: int, mountpoint: str) -> int:
    """A detached copy of one mount of pid's namespace, without what is mounted on it (open_tree
    OPEN_TREE_CLONE, criu's clean view of a tmpfs: the directories under /dev/shm..., not the mounts).
    open_tree clones mounts of the caller's namespace only: a child joins pid's and sends the fd back."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    ns = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    child = os.fork()
    if child == 0:  # pragma: no cover - reports through the socket
        try:
            a.close()
            setns(ns, CLONE_NEWNS)
            buf = ctypes.create_string_buffer(os.fsencode(mountpoint))
            fd = syscall(NR_OPEN_TREE, AT_FDCWD, ctypes.addressof(buf), OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC)
            socket.send_fds(b, [b"ok"], [fd])
        except BaseException as e:  # noqa: BLE001 - the message goes to the parent
            b.send(str(e).encode()[:1000])
        os._exit(0)
    os.close(ns)
    b.close()
    try:
        msg, fds, _, _ = socket.recv_fds(a, 1024, 1)
    finally:
        a.close()
        os.waitpid(child, 0)
    if not fds:
        raise SpiceError("dump", f"mount at {mountpoint} of task {pid}'s namespace: can't clone it: "
                                 f"{msg.decode(errors='replace') or 'the helper died'}")
    return fds[0]


def _tar(ctx: DumpContext, pid: int, m: mountinfo.Mount, name: str) -> None:
    path = ctx.images.file(name)
    fd = _clone_mount(pid, m.mountpoint)
    try:
        with open(path, "wb") as f:
            r = subprocess.run([*TAR, "--directory", f"/proc/self/fd/{fd}", "."], stdout=f, stderr=subprocess.PIPE,
                               check=False, pass_fds=[fd])
    finally:
        os.close(fd)
    if r.returncode:
        raise SpiceError("dump", f"tmpfs at {m.mountpoint} (mount {m.mnt_id}): tar failed: "
                                 f"{r.stderr.decode(errors='replace').strip() or f'exit {r.returncode}'}")


def _mounts(ctx: DumpContext, pid: int) -> list[mountinfo.Mount]:
    """The tree's mounts (read once per dump: the tree is frozen)."""
    got = getattr(ctx, "tree_mounts", None)
    if got is None:
        try:
            with open(f"/proc/{pid}/mountinfo") as f:
                got = mountinfo.parse(f.read())
        except OSError as e:
            raise SpiceError("dump", f"mount namespace of task {pid}: {e.strerror}") from None
        ctx.tree_mounts = got  # type: ignore[attr-defined]
    return got


def mount_ids(ctx: DumpContext, pid: int) -> set[int]:
    return {m.mnt_id for m in _mounts(ctx, pid)}


def dump(ctx: DumpContext, ns_id: int, pid: int) -> None:
    mounts = _mounts(ctx, pid)
    root = next((m for m in mounts if m.mountpoint == "/"), None)
    if root is None:
        raise SpiceError("dump", f"mount namespace {ns_id} (of task {pid}): no root mount")
    ext = mountinfo.mnt_externals(ctx.opts.external)  # mount point -> key
    entries = [_entry(m, root.mnt_id, ext) for m in mounts]
    ctx.images.add_all(f"mountpoints-{ns_id}.img", "MNTS", reversed(entries))
    done: set[int] = set()
    for m, e in zip(mounts, entries, strict=True):
        if e.fstype == TMPFS and m.root == "/" and not e.HasField("ext_key") and e.root_dev not in done:
            done.add(e.root_dev)
            _tar(ctx, pid, m, f"tmpfs-dev-{e.root_dev}.tar.gz.img")
