# SPDX-License-Identifier: MIT
"""The file table: files.img objects, and each task's fd table (fdinfo-<files_id>.img).

Mirror of restore/files.py. Every open file description is dumped once, under an id shared by every
fd (in any task) that refers to it; files reached otherwise (mappings, exe, cwd, root) get ids by
device and inode, as CRIU's fd_id_generate_special does. An fd is classified by what it is (regular
file, pipe, socket, eventfd...) and handed to the dumper registered for that kind with @dumper; kinds
live in their own modules (pipes.py, sockets.py, eventfds.py, tty.py). An fd nobody handles fails the
dump, naming the task, the fd and the object. This module holds the registry, the fd-table walk and
regular files: directories, devices, deleted-but-open files (ghost files) and memfds.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import struct

from ..errors import SpiceError
from ..images import codec, lite
from ..images.lite import Message
from ..linux import kcmp, pidfd
from ..linux.syscalls import fs_type
from ..log import log
from . import proc

TYPE_CHECKING = False  # typing costs ~10 ms of start-up; annotations are strings
if TYPE_CHECKING:
    from collections.abc import Callable

    from .run import DumpContext

    Dumper = Callable[["OpenFd", int], str]

O_ACCMODE, O_WRONLY, O_APPEND, O_CLOEXEC, O_PATH = 0o3, 0o1, 0o2000, 0o2000000, 0o10000000
FD_CLOEXEC = 1
F_GETSIG, F_GETOWN_EX, F_GETOWNER_UIDS = 11, 16, 17
BUILD_ID_MAP_SIZE = 1 << 20
NT_GNU_BUILD_ID, PT_NOTE = 3, 4
GHOST_CHUNKS_THRESH = 3 * 4096
DELETED = " (deleted)"
MEMFD_PREFIX = "/memfd:"
REMAP_GHOST = 1


# ------------------------------------------------------------------------------------------ file ids


class FileIds:
    """CRIU's one id sequence for file objects (fd_tree.subid), and its two ways to share an id."""

    def __init__(self) -> None:
        self.next = 1
        self._special: dict[tuple[int, int], int] = {}  # (dev, ino) -> id
        self._descs: dict[tuple[int, int, int], list[tuple[int, int, int]]] = {}  # genid -> [(pid, fd, id)]
        self._unordered: set[tuple[int, int, int]] = set()  # genids whose list kcmp could not order
        self.kinds: dict[int, str] = {}  # id -> fd type name of its entry

    def new(self) -> int:
        i = self.next
        self.next += 1
        return i

    def special(self, st: os.stat_result) -> tuple[int, bool]:
        """Id of a file met through a mapping or the exe link: shared by device and inode."""
        key = (st.st_dev, st.st_ino)
        fid = self._special.get(key)
        if fid is not None:
            return fid, False
        fid = self._special[key] = self.new()
        return fid, True

    def description(self, pid: int, fd: int, st: os.stat_result, pos: int) -> tuple[int, bool]:
        """Id of the open file description behind pid's fd: equal for every fd kcmp says is the same."""
        gen = (st.st_dev, st.st_ino, pos)
        seen = self._descs.setdefault(gen, [])
        found, at = self._find(gen, seen, pid, fd)
        if found is not None:
            return found, False
        fid = self.new()
        seen.insert(at, (pid, fd, fid))
        self._special.setdefault((st.st_dev, st.st_ino), fid)
        return fid, True

    def _find(self, gen: tuple[int, int, int], seen: list[tuple[int, int, int]], pid: int,
              fd: int) -> tuple[int | None, int]:
        """(id of the description in `seen` that pid's fd shares, or None; where the fd goes in seen).

        As CRIU's kid tree: the fds met with one (dev, ino, pos) are kept in kcmp's (obfuscated but
        consistent) order of their files, so a lookup takes log(n) kcmp calls, not n: 300 opens of
        one file cost 45,000 calls (~200 ms) the linear way. Should kcmp give no order, that list is
        searched one call per entry from then on."""
        if gen not in self._unordered:
            lo, hi = 0, len(seen)
            while lo < hi:
                mid = (lo + hi) // 2
                opid, ofd, oid = seen[mid]
                try:
                    order = kcmp.kcmp(pid, opid, kcmp.KCMP_FILE, fd, ofd)
                except OSError:
                    order = -1
                if order == 0:
                    return oid, mid
                if order == 1:
                    hi = mid
                elif order == 2:
                    lo = mid + 1
                else:
                    self._unordered.add(gen)
                    break
            else:
                return None, lo
        for opid, ofd, oid in seen:
            try:
                if kcmp.same(pid, opid, kcmp.KCMP_FILE, fd, ofd):
                    return oid, len(seen)
            except OSError:
                continue
        return None, len(seen)


# ------------------------------------------------------------------------------------------ registry


class OpenFd:
    """One fd of a frozen task, with a copy of it in spice (pidfd_getfd) to inspect: lfd is our
    duplicate of the file description, link what /proc/PID/fd/N points to."""

    __slots__ = ("ctx", "pid", "fd", "lfd", "st", "info", "link")

    def __init__(self, ctx: DumpContext, pid: int, fd: int, lfd: int, st: os.stat_result, info: proc.FdInfo,
                 link: str) -> None:
        self.ctx, self.pid, self.fd, self.lfd, self.st, self.info, self.link = ctx, pid, fd, lfd, st, info, link

    @property
    def flags(self) -> int:
        """The description's open flags (F_GETFL), as CRIU records them."""
        return self.info.flags & ~O_CLOEXEC

    def describe(self) -> str:
        return f"task {self.pid}: fd {self.fd} is {self.link}"


#: fd kind -> dumper(fd, file id) -> fd_types name of the entry it wrote
DUMPERS: dict[str, Dumper] = {}
#: fd kind -> the module (of this package) that registers its dumper, imported on first need
KIND_MODULES = {"pipe": "pipes", "fifo": "pipes", "socket": "sockets", "eventfd": "eventfds",
                "eventpoll": "eventfds", "timerfd": "eventfds", "signalfd": "eventfds", "tty": "tty",
                "inotify": "fsnotify", "pidfd": "pidfds"}


def dumper(kind: str):
    def reg(fn: Dumper) -> Dumper:
        DUMPERS[kind] = fn
        return fn

    return reg


def _load_kind_module(kind: str) -> None:
    """Import the module that handles `kind` (all known ones if the kind is not in the table)."""
    names = [KIND_MODULES[kind]] if kind in KIND_MODULES else sorted(set(KIND_MODULES.values()))
    for name in names:
        mod = f"{__package__}.{name}"
        try:
            __import__(mod)  # importlib.util costs ~1 ms of start-up
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise


_ANON_KINDS = {"[eventfd]": "eventfd", "[eventpoll]": "eventpoll", "[timerfd]": "timerfd",
               "[signalfd]": "signalfd", "inotify": "inotify", "[fanotify]": "fanotify", "[pidfd]": "pidfd",
               "bpf-map": "bpfmap", "[userfaultfd]": "userfaultfd", "[io_uring]": "io_uring"}
TTY_MAJORS = {4, 5, *range(128, 144)}  # ttys, /dev/tty + console + ptmx, Unix98 pty masters and slaves


def classify(link: str, st: os.stat_result, shmem_dev: int) -> str:
    """The kind of object an fd refers to (the key of DUMPERS)."""
    mode = st.st_mode
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISFIFO(mode):
        return "pipe" if link.startswith("pipe:") else "fifo"
    if stat.S_ISCHR(mode) and os.major(st.st_rdev) in TTY_MAJORS:
        return "tty"
    if link.startswith("anon_inode:"):
        return _ANON_KINDS.get(link[len("anon_inode:"):], "anon_inode")
    if st.st_dev == shmem_dev and link.startswith(MEMFD_PREFIX):
        return "memfd"
    if link.startswith("/"):
        return "reg"
    return "unknown"


def socket_details(lfd: int) -> str:
    """What a socket is, for error messages: TCP, UDP, unix stream..."""
    import _socket as socket  # the C module: socket.py imports enum, selectors, array... (~5 ms)

    try:
        s = socket.socket(fileno=os.dup(lfd))
    except OSError:
        return "socket"
    try:
        fam, typ = s.family, s.type
        if fam in (socket.AF_INET, socket.AF_INET6):
            return {socket.SOCK_STREAM: "TCP", socket.SOCK_DGRAM: "UDP", socket.SOCK_RAW: "raw IP"}.get(typ, "inet")
        if fam == socket.AF_UNIX:
            return {socket.SOCK_STREAM: "unix stream", socket.SOCK_DGRAM: "unix dgram",
                    socket.SOCK_SEQPACKET: "unix seqpacket"}.get(typ, "unix")
        return {socket.AF_NETLINK: "netlink", getattr(socket, "AF_PACKET", 17): "packet"}.get(fam, f"family {fam}")
    finally:
        s.close()


def fown(lfd: int) -> dict[str, int]:
    """The F_SETOWN state of a description (CRIU's fill_fds_fown)."""
    out = {"uid": 0, "euid": 0, "signum": 0, "pid_type": 0, "pid": 0}
    try:
        typ, pid = struct.unpack("<ii", fcntl.fcntl(lfd, F_GETOWN_EX, bytes(8)))
        out["signum"] = fcntl.fcntl(lfd, F_GETSIG)
    except OSError:
        return out
    if pid:
        try:
            uid, euid = struct.unpack("<II", fcntl.fcntl(lfd, F_GETOWNER_UIDS, bytes(8)))
        except OSError:
            uid = euid = 0
        out.update(uid=uid, euid=euid, pid_type=typ, pid=pid)
    return out


def add_file(ctx: DumpContext, type_name: str, fid: int, sub: str, msg: Message) -> None:
    """Append a file_entry {type, id, <sub>: msg} to files.img."""
    fe = codec.pb("file_entry", lite=True)(type=_fd_type(type_name), id=fid)
    if "fown" in type(msg)._by_name and msg.fown.pid:  # fown() reads our pid: the image holds the tree's
        msg.fown.pid = ctx.vpid(msg.fown.pid)
    getattr(fe, sub).CopyFrom(msg)
    ctx.images.add("files.img", "FILES", fe)
    ctx.files.kinds[fid] = type_name


def _fd_type(name: str) -> int:
    return lite.enum_numbers("fd_types")[name]


# ------------------------------------------------------------------------------------------ fd table


def dump_fds(ctx: DumpContext, pid: int, files_id: int) -> None:
    """fdinfo-<files_id>.img and the files.img entries of every fd of pid, in fd order."""
    fds = proc.fds(pid)
    if not fds:
        return
    try:
        pfd = pidfd.pidfd_open(pid)
    except OSError as e:
        raise SpiceError("dump", f"task {pid}: pidfd_open: {e.strerror}") from None
    try:
        for fd in fds:
            _dump_fd(ctx, pid, pfd, fd, files_id)
    finally:
        os.close(pfd)


def _dump_fd(ctx: DumpContext, pid: int, pfd: int, fd: int, files_id: int) -> None:
    try:
        lfd = pidfd.pidfd_getfd(pfd, fd)
    except OSError as e:
        if e.errno == errno.EBADF:
            return  # closed meanwhile (cannot happen while frozen, but be safe)
        raise SpiceError("dump", f"task {pid}: can't get fd {fd}: {e.strerror}") from None
    try:
        info = proc.fdinfo(pid, fd)
        link = os.readlink(f"/proc/self/fd/{lfd}")
        st = os.fstat(lfd)
        of = OpenFd(ctx, pid, fd, lfd, st, info, link)
        kind = classify(link, st, ctx.shmem_dev)
        fn = DUMPERS.get(kind)
        if fn is None:
            _load_kind_module(kind)
            fn = DUMPERS.get(kind)
        if fn is None:
            what = socket_details(lfd) if kind == "socket" else kind
            raise SpiceError("dump", f"{of.describe()} ({what}): not supported")
        fid, new = ctx.files.description(pid, fd, st, info.pos)
        type_name = fn(of, fid) if new else ctx.files.kinds[fid]
        log.debug(f"task {pid} fd {fd}: {link} -> {type_name} file id {fid}{'' if new else ' (shared)'}")
        fe = codec.pb("fdinfo_entry", lite=True)(id=fid, flags=FD_CLOEXEC if info.flags & O_CLOEXEC else 0,
                                      type=_fd_type(type_name), fd=fd)
        ctx.images.add(f"fdinfo-{files_id}.img", "FDINFO", fe)
        for line in info.locks:
            file_lock(ctx, pid, fd, line)
    finally:
        os.close(lfd)


# ------------------------------------------------------------------------------------------ file locks

FL_POSIX, FL_FLOCK, FL_OFD = 1, 2, 4
F_RDLCK, F_WRLCK, F_UNLCK = 0, 1, 2
LOCK_MAND, LOCK_READ, LOCK_WRITE, LOCK_RW = 32, 64, 128, 192
_LOCK_KINDS = {"POSIX": FL_POSIX, "FLOCK": FL_FLOCK, "OFDLCK": FL_OFD}


def file_lock(ctx: DumpContext, pid: int, fd: int, line: str) -> None:
    """A lock the fd holds (its fdinfo "lock:" line), as a filelocks.img entry (criu --file-locks)."""
    # "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF"
    parts = line.split()
    if len(parts) < 8 or parts[1] not in _LOCK_KINDS:
        raise SpiceError("dump", f"task {pid}: fd {fd}: unknown file lock [{line}]")
    if not ctx.opts.file_locks:
        raise SpiceError("dump", f"task {pid}: fd {fd} holds a file lock: Some file locks are hold by dumping "
                                 "tasks! You can try --file-locks to dump them.")
    kind, mand, opt = _LOCK_KINDS[parts[1]], parts[2], parts[3]
    if mand == "MSNFS":
        ltype = LOCK_MAND | {"READ": LOCK_READ, "RW": LOCK_RW, "WRITE": LOCK_WRITE}[opt]
    else:
        ltype = {"UNLCK": F_UNLCK, "WRITE": F_WRLCK, "READ": F_RDLCK}[opt]
    start, end = int(parts[6]), parts[7]
    length = 0 if end.startswith("EOF") else int(end) + 1 - start
    ctx.images.add("filelocks.img", "FILE_LOCKS", codec.pb("file_lock_entry", lite=True)(
        flag=kind, type=ltype, pid=ctx.vpid(pid), fd=fd, start=start, len=length))


# ------------------------------------------------------------------------------------------ regular files


_NO_OWNER = {"uid": 0, "euid": 0, "signum": 0, "pid_type": 0, "pid": 0}


class RegParams:
    """fd_parms of CRIU: what a file was opened with (zeros for mappings, exe, cwd, root)."""

    __slots__ = ("flags", "pos", "fown")

    def __init__(self, flags: int = 0, pos: int = 0, fown: dict[str, int] | None = None) -> None:
        self.flags, self.pos, self.fown = flags, pos, fown or _NO_OWNER


def should_check_size(flags: int) -> bool:
    """CRIU skips the size of O_WRONLY|O_APPEND files (logs grow while we dump)."""
    return not ((flags & O_ACCMODE) == O_WRONLY and flags & O_APPEND)


def build_id(fd: int, size: int) -> list[int] | None:
    """The GNU build-id of an ELF file as u32 words, looked for in the first 1 MiB like CRIU does."""
    if size < 5:
        return None
    try:
        head = os.pread(fd, 64, 0)
    except OSError:
        return None
    if head[:4] != b"\x7fELF" or len(head) < 5:
        return None
    limit = min(size, BUILD_ID_MAP_SIZE)
    if head[4] == 2:  # ELFCLASS64
        if len(head) < 64:
            return None
        phoff, = struct.unpack_from("<Q", head, 32)
        phentsize, phnum = struct.unpack_from("<HH", head, 54)
        ph_fmt, off_i, sz_i = "<IIQQQQQQ", 2, 5
    elif head[4] == 1:
        if len(head) < 52:
            return None
        phoff, = struct.unpack_from("<I", head, 28)
        phentsize, phnum = struct.unpack_from("<HH", head, 42)
        ph_fmt, off_i, sz_i = "<IIIIIIII", 1, 4
    else:
        return None
    if not phnum or phoff <= 0 or phoff >= limit:
        return None
    phsz = struct.calcsize(ph_fmt)
    table = os.pread(fd, min(phnum * phentsize, max(0, limit - phoff)), phoff)
    for i in range(phnum):
        off = i * phentsize
        if off + phsz > len(table):
            break
        ph = struct.unpack_from(ph_fmt, table, off)
        if ph[0] != PT_NOTE:
            continue
        n_off, n_size = ph[off_i], ph[sz_i]
        if n_off <= 0 or n_off >= limit:
            continue
        notes = os.pread(fd, min(n_size, limit - n_off), n_off)
        pos = 0
        while pos + 12 <= len(notes):
            namesz, descsz, ntype = struct.unpack_from("<III", notes, pos)
            desc_at = pos + 12 + ((namesz + 3) & ~3)
            if ntype == NT_GNU_BUILD_ID:
                if descsz <= 0 or descsz > 512 or desc_at + descsz > limit - n_off:
                    return None
                desc = os.pread(fd, descsz, n_off + desc_at)
                desc = desc.ljust((descsz + 3) & ~3, b"\0")
                return list(struct.unpack(f"<{len(desc) // 4}I", desc))
            pos = desc_at + ((descsz + 3) & ~3)
        continue
    return None


def reg_entry(ctx: DumpContext, fid: int, fd: int, link: str, st: os.stat_result, p: RegParams,
              what: str, ghost: bool = True) -> None:
    """A REG file_entry for an open file (fd: a descriptor of it in spice), with CRIU's checks: the
    path must name this very file, a deleted one is carried along as a ghost file (unless `ghost`
    is False: a hung-up pty slave's node, gone from devpts, is made again with its pty)."""
    name = link
    if not name.startswith("/"):
        raise SpiceError("dump", f"{what}: the path [{link}] is not supported")
    mnt_id = _tree_mount(ctx, fd, what, link)
    if st.st_nlink == 0:
        if name.endswith(DELETED):
            name = name[: -len(DELETED)]
        if ghost:
            _ghost(ctx, fid, fd, name, st, what)
    else:
        _check_path(mnt_path(ctx, name), st, what)
    r = codec.pb("reg_file_entry", lite=True)(id=fid, flags=p.flags, pos=p.pos, name=name, mode=st.st_mode)
    if mnt_id is not None:
        r.mnt_id = mnt_id
    for k, v in p.fown.items():
        setattr(r.fown, k, v)
    if stat.S_ISREG(st.st_mode) and should_check_size(p.flags):
        r.size = st.st_size
        bid = ctx.build_ids.get((st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size), False)
        if bid is False:
            bid = ctx.build_ids[(st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)] = _build_id_of(fd, st)
        if bid:
            r.build_id.extend(bid)
    add_file(ctx, "REG", fid, "reg", r)


def _build_id_of(fd: int, st: os.stat_result) -> list[int] | None:
    try:
        rfd = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return build_id(rfd, st.st_size)
    except OSError:
        return None
    finally:
        os.close(rfd)


def _tree_mount(ctx: DumpContext, fd: int, what: str, link: str) -> int | None:
    """With a mount namespace of the tree's own: the mount (mountpoints-<id>.img) the file was opened
    through, as criu records it; a file of a mount outside that namespace is refused, as criu does."""
    own = ctx.ids.own_ns("mnt")
    if own is None:
        return None
    from .mntns import mount_ids

    mnt_id = proc.fdinfo(os.getpid(), fd).mnt_id
    if mnt_id not in mount_ids(ctx, own[1]):
        raise SpiceError("dump", f"{what}: {link} is on mount {mnt_id}, which is not in the tree's mount "
                                 f"namespace: not supported")
    return mnt_id


def mnt_path(ctx: DumpContext, name: str) -> str:
    """Where spice reaches a path of the tree's: the paths the kernel gives (/proc/PID/fd links, maps)
    are seen from the tree's root, which is /proc/<root>/root when the tree has its own mount
    namespace (dump/mntns.py)."""
    own = ctx.ids.own_ns("mnt")
    return name if own is None else f"/proc/{own[1]}/root{name}"


def _check_path(name: str, st: os.stat_result, what: str) -> None:
    try:
        pst = os.stat(name, follow_symlinks=not stat.S_ISLNK(st.st_mode))
    except FileNotFoundError:
        raise SpiceError("dump", f"{what}: {name} is unlinked but still has other links; "
                                 f"can't create a link remap for it (--link-remap is not supported)") from None
    except OSError as e:
        raise SpiceError("dump", f"{what}: can't stat {name}: {e.strerror}") from None
    if (pst.st_ino, pst.st_dev) != (st.st_ino, st.st_dev):
        raise SpiceError("dump", f"{what}: {name} now names another file (opened {os.major(st.st_dev)}:"
                                 f"{os.minor(st.st_dev)}:{st.st_ino}, path is {pst.st_ino})")


# ------------------------------------------------------------------------------------------ ghost files


def _ghost(ctx: DumpContext, fid: int, fd: int, name: str, st: os.stat_result, what: str) -> None:
    """A deleted file: its contents go into ghost-file-<id>.img, remap-fpath.img points at it."""
    used = st.st_blocks * 512
    if used > ctx.opts.ghost_limit:
        raise SpiceError("dump", f"{what}: can't dump ghost file {name} of {used} size, increase limit "
                                 f"(--ghost-limit {ctx.opts.ghost_limit})")
    key = (st.st_dev, st.st_ino)
    gid = ctx.ghosts.get(key)
    if gid is None:
        gid = ctx.ghosts[key] = len(ctx.ghosts) + 1
        _ghost_image(ctx, gid, fd, st)
    ctx.images.add("remap-fpath.img", "REMAP_FPATH",
                   codec.pb("remap_file_path_entry", lite=True)(orig_id=fid, remap_id=gid, remap_type=REMAP_GHOST))


def kdev(dev: int) -> int:
    """A device number in the kernel's internal encoding (MKDEV: major << 20 | minor), as CRIU stores
    devices it takes from mountinfo / the kernel."""
    return (os.major(dev) << 20 | os.minor(dev)) & 0xFFFFFFFF


def _ghost_image(ctx: DumpContext, gid: int, fd: int, st: os.stat_result) -> None:
    g = codec.pb("ghost_file_entry", lite=True)(uid=st.st_uid, gid=st.st_gid, mode=st.st_mode, dev=kdev(st.st_dev),
                                     ino=st.st_ino)
    g.atim.tv_sec, g.atim.tv_usec = st.st_atime_ns // 10**9, st.st_atime_ns % 10**9 // 1000
    g.mtim.tv_sec, g.mtim.tv_usec = st.st_mtime_ns // 10**9, st.st_mtime_ns % 10**9 // 1000
    if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        g.rdev = kdev(st.st_rdev)
    name = f"ghost-file-{gid:x}.img"
    if stat.S_ISLNK(st.st_mode):
        g.symlnk_target = os.readlink(f"/proc/self/fd/{fd}")
    if not stat.S_ISREG(st.st_mode):
        ctx.images.add(name, "GHOST_FILE", g)
        return
    rfd = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if st.st_size >= GHOST_CHUNKS_THRESH:
            g.chunks, g.size = True, st.st_size
            ctx.images.add(name, "GHOST_FILE", g)
            for off, length in _data_extents(rfd, st.st_size):
                ctx.images.add(name, "GHOST_FILE", codec.pb("ghost_chunk_entry", lite=True)(len=length, off=off),
                               _pread_all(rfd, length, off))
        else:
            ctx.images.add(name, "GHOST_FILE", g, _pread_all(rfd, st.st_size, 0))
    finally:
        os.close(rfd)


def _pread_all(fd: int, n: int, off: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = os.pread(fd, n - len(out), off + len(out))
        if not chunk:
            break
        out += chunk
    return bytes(out)


FS_IOC_FIEMAP = 0xC020660B
FIEMAP_FLAG_SYNC, FIEMAP_EXTENT_LAST = 1, 1
_EXTENTS = 512


def _data_extents(fd: int, size: int) -> list[tuple[int, int]]:
    """(offset, length) data ranges of a file: FIEMAP extents (CRIU's default --ghost-fiemap), else
    SEEK_DATA/SEEK_HOLE."""
    try:
        return _fiemap(fd, size)
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL):
            raise
    return [(lo, hi - lo) for lo, hi in data_segments(fd, size)]


def data_segments(fd: int, size: int) -> list[tuple[int, int]]:
    """[start, end) ranges below `size` that hold data (SEEK_DATA/SEEK_HOLE; the whole file if the
    filesystem cannot tell)."""
    out = []
    pos = 0
    while pos < size:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:
                break
            return [(0, size)]
        hole = os.lseek(fd, data, os.SEEK_HOLE)
        out.append((data, min(hole, size)))
        pos = hole
    return out


def _fiemap(fd: int, size: int) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    pos = 0
    while True:
        req = bytearray(32 + 56 * _EXTENTS)
        struct.pack_into("<QQIIII", req, 0, pos, 0xFFFFFFFFFFFFFFFF, FIEMAP_FLAG_SYNC, 0, _EXTENTS, 0)
        fcntl.ioctl(fd, FS_IOC_FIEMAP, req)
        mapped = struct.unpack_from("<I", req, 20)[0]
        if not mapped:
            return out
        last = False
        for i in range(mapped):
            logical, _phys, length = struct.unpack_from("<QQQ", req, 32 + 56 * i)
            eflags = struct.unpack_from("<I", req, 32 + 56 * i + 40)[0]
            if logical <= size:
                out.append((logical, min(length, size - logical)))
            pos = logical + length
            if eflags & FIEMAP_EXTENT_LAST:
                last = True
                break
        if last or mapped < _EXTENTS:
            return out


# ------------------------------------------------------------------------------------------ kinds here


MQUEUE_MAGIC = 0x19800202


@dumper("reg")
def _dump_reg(of: OpenFd, fid: int) -> str:
    if fs_type(of.lfd) == MQUEUE_MAGIC:
        # criu 4.2 has no image for these either: it fails on the mqueue mount, not in mountinfo
        raise SpiceError("dump", f"{of.describe()}: {of.link} is a POSIX message queue (mq_open); "
                                 f"message queues are not supported (criu refuses them too)")
    reg_entry(of.ctx, fid, of.lfd, of.link, of.st, RegParams(of.flags, of.info.pos, fown(of.lfd)), of.describe())
    return "REG"


@dumper("memfd")
def _dump_memfd(of: OpenFd, fid: int) -> str:
    from . import shmem

    shmem.memfd_file(of.ctx, fid, of.lfd, of.link, of.st, RegParams(of.flags, of.info.pos, fown(of.lfd)))
    return "MEMFD"


def special_file(ctx: DumpContext, path_fd: int, what: str, st: os.stat_result | None = None) -> int:
    """files.img id of a file reached through a mapping or the exe link (shared by inode)."""
    st = st or os.fstat(path_fd)
    fid, new = ctx.files.special(st)
    if new:
        reg_entry(ctx, fid, path_fd, os.readlink(f"/proc/self/fd/{path_fd}"), st, RegParams(), what)
    return fid


def fs_file(ctx: DumpContext, pid: int, which: str) -> int:
    """A task's cwd or root: a new REG entry every time (CRIU does not share these ids)."""
    fd = os.open(f"/proc/{pid}/{which}", O_PATH | os.O_CLOEXEC)
    try:
        fid = ctx.files.new()
        reg_entry(ctx, fid, fd, os.readlink(f"/proc/self/fd/{fd}"), os.fstat(fd), RegParams(),
                  f"task {pid}: {which}")
        return fid
    finally:
        os.close(fd)


def dump_fs(ctx: DumpContext, pid: int, umask: int) -> None:
    """fs-<pid>.img: cwd and root (as REG entries) and the umask."""
    cwd = fs_file(ctx, pid, "cwd")
    root = fs_file(ctx, pid, "root")
    fs = codec.pb("fs_entry", lite=True)(cwd_id=cwd, root_id=root, umask=umask)
    ctx.images.add(f"fs-{ctx.vpid(pid)}.img", "FS", fs)
