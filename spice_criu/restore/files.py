# SPDX-License-Identifier: MIT
"""The file table: files.img objects, and each task's fd table (fdinfo-<files_id>.img).

Restore opens every file object once, in the restorer itself (so file descriptions shared between
tasks or fds stay shared: one open file, one offset), and each restored task then pulls the objects
it needs into its own fd table with pidfd_getfd(). Kinds live in their own modules (pipes, sockets,
eventfds...); this module holds the common parts and regular files (incl. directories, devices,
deleted "ghost" files and memfds).
"""

from __future__ import annotations

import os
import stat

from ..errors import ImageError, SpiceError
from ..images import codec, lite
from ..images.imagedir import ImageDir
from ..record import Record

TYPE_CHECKING = False  # typing costs ~10 ms of start-up; annotations are strings
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, ClassVar

    from .mm import ShmemPlan

O_ACCMODE = 0o3
O_CREAT, O_EXCL, O_NOCTTY, O_TRUNC = 0o100, 0o200, 0o400, 0o1000
O_APPEND, O_NONBLOCK, O_ASYNC = 0o2000, 0o4000, 0o20000
O_DIRECTORY, O_NOFOLLOW, O_CLOEXEC = 0o200000, 0o400000, 0o2000000
O_LARGEFILE = 0o100000
_O_TMPFILE = 0o20000000  # O_TMPFILE is this | O_DIRECTORY
FD_CLOEXEC = 1
#: open(2) flags that must not be replayed (they would create/truncate/fail)
_NOT_REPLAYED = O_CREAT | O_EXCL | O_TRUNC | O_NOCTTY | O_CLOEXEC


class OpenContext:
    """What file objects need while being opened in the restorer: the images, options, and peers."""

    def __init__(self, imgdir: ImageDir, root: str = "/", inherit: dict[str, int] | None = None) -> None:
        self.imgdir = imgdir
        self.root = root
        self.inherit = inherit or {}
        self.files: dict[int, FileObj] = {}
        self.opened: dict[int, int] = {}  # file id -> fd in the restorer
        self.cleanup: list[Callable[[], None]] = []
        self.state: dict[str, Any] = {}  # what planning learnt (plan_files' state)
        self.cache: dict[str, dict] = {}  # per-kind objects made while opening (pipes, memfds...)
        self.options: Any = None  # the restore's cli.Options (--tcp-established, --shell-job...)
        self.completion: list[Callable[[], None]] = []  # run once every task is built, before resume

    def option(self, name: str) -> bool:
        """A restore option (--tcp-established, --shell-job...) as the caller gave it."""
        return bool(getattr(self.options, name, False))

    def when_complete(self, fn: Callable[[], None]) -> None:
        """Run fn after the last task is built and before any resumes (only if all went well);
        what must be undone on failure goes to `cleanup`, which always runs."""
        self.completion.append(fn)

    def complete(self) -> None:
        for fn in self.completion:
            fn()

    def run_hooks(self, kind: str, task) -> None:
        """The hooks file kinds registered in the planning state for a point of a task's restore:
        "session_hooks" right after a session leader's setsid(), "task_hooks" after its fds."""
        for hook in self.state.get(kind, ()):
            hook(task, self)

    def kind_cache(self, name: str) -> dict:
        return self.cache.setdefault(name, {})

    def inherited(self, *keys: str) -> int | None:
        """The --inherit-fd fd given for any of these keys (CRIU's key forms), if any."""
        for k in keys:
            if k in self.inherit:
                return self.inherit[k]
        return None

    def path(self, name: str) -> str:
        return name if self.root == "/" else os.path.join(self.root, name.lstrip("/"))

    def ghost_path(self, file_id: int | None) -> str | None:
        """For a deleted file (a ghost: a POSIX semaphore in /dev/shm, a removed cwd), where a task
        opens or enters it: it is recreated once, in the restorer, and reached through its fd there,
        so every task and fd referring to it share the one inode, as they did when dumped. None for
        any other file."""
        f = self.files.get(file_id) if file_id is not None else None
        if isinstance(f, RegFile) and f.ghost is not None:
            return f"/proc/{os.getpid()}/fd/{self.fd_of(f.id)}"
        return None

    def source_path(self, file_id: int | None, path: str) -> str:
        """Where a task opens a file its address space is built from: its ghost, or its path."""
        return self.ghost_path(file_id) or self.path(path)

    def fd_of(self, file_id: int) -> int:
        """The restorer's fd for a file object, opening it on first use."""
        fd = self.opened.get(file_id)
        if fd is None:
            fd = self.opened[file_id] = self.files[file_id].open(self)
        return fd

    def close_all(self) -> None:
        for fd in self.opened.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self.opened.clear()
        for fn in reversed(self.cleanup):
            fn()
        self.cleanup.clear()


class FileObj(Record):
    """One open file description from files.img."""

    id: int
    flags: int
    kind: ClassVar[str] = "file"

    def describe(self) -> str:
        return f"{self.kind} (file id {self.id})"

    def open(self, ctx: OpenContext) -> int:
        raise NotImplementedError

    def needs_task_setup(self) -> bool:
        """True if the object must be finished inside the task (e.g. epoll registrations)."""
        return False


class Ghost(Record):
    """A deleted file or directory the dump kept (ghost-file-<id>.img): recreated once per
    restore, whichever fds, mappings and cwds of whichever tasks refer to it, so that they all
    share its one inode."""

    id: int  # its remap id
    data: bytes
    mode: int
    uid: int
    gid: int
    times: tuple[int, int] | None  # atime, mtime (ns), when the image has them

    def inode(self, ctx: OpenContext, path: str) -> int:
        """A restorer fd of the recreated file: made where it lived (so /proc shows the dumped
        "PATH (deleted)" again; next to it if something took that name since) and unlinked."""
        cache = ctx.kind_cache("ghosts")
        fd = cache.get(self.id)
        if fd is not None:
            return fd
        for name in (path, f"{path}.spice-ghost.{os.getpid()}"):
            try:
                fd = self._create(name)
                break
            except FileExistsError:
                continue
            except OSError as e:
                raise SpiceError("files", f"can't recreate deleted file {path}: {e.strerror}") from None
        else:
            raise SpiceError("files", f"can't recreate deleted file {path}: its name and a spare one are taken")
        try:
            if not stat.S_ISDIR(self.mode):
                os.write(fd, self.data)
            os.fchown(fd, self.uid, self.gid)
            os.fchmod(fd, self.mode & 0o7777)  # past the umask, as dumped
            if self.times:
                os.utime(fd, ns=self.times)
            if not stat.S_ISDIR(self.mode):  # keep it read-only: a writer would bar it as an exe (ETXTBSY)
                ro = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | O_CLOEXEC)
                os.close(fd)
                fd = ro
        except OSError as e:
            os.close(fd)
            raise SpiceError("files", f"can't recreate deleted file {path}: {e.strerror}") from None
        cache[self.id] = fd
        ctx.cleanup.append(lambda: os.close(fd))
        return fd

    def _create(self, name: str) -> int:
        """Create, open and unlink `name` (FileExistsError if it exists: nothing is touched then)."""
        if not stat.S_ISDIR(self.mode):
            fd = os.open(name, os.O_CREAT | os.O_EXCL | os.O_RDWR | O_CLOEXEC, 0o600)
            os.unlink(name)
            return fd
        os.mkdir(name, 0o700)
        try:
            return os.open(name, os.O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        finally:
            os.rmdir(name)


class RegFile(FileObj):
    path: str = ""
    pos: int = 0
    size: int | None = None
    mode: int | None = None
    ghost: Ghost | None = None  # a deleted-but-open (or -mapped) file
    fown: Any = None  # F_SETOWN/F_SETSIG (the image's fown_entry)
    kind: ClassVar[str] = "regular file"

    def describe(self) -> str:
        return f"{self.path} (file id {self.id})"

    def open(self, ctx: OpenContext) -> int:
        path = ctx.path(self.path)
        inherited = ctx.inherited(self.path.lstrip("/"), self.path)  # CRIU's key: no leading "/"
        if inherited is not None:
            return os.dup(inherited)
        flags = (self.flags & ~_NOT_REPLAYED) | O_CLOEXEC
        if self.ghost is not None:  # an open file description of its own, on the shared inode
            path = f"/proc/self/fd/{self.ghost.inode(ctx, path)}"
            # through a magic link, which O_NOFOLLOW refuses (ELOOP): shm_open()'s fds carry it
            flags &= ~O_NOFOLLOW
        if flags & _O_TMPFILE:  # an O_TMPFILE file (a ghost now): reopened, not made again
            flags &= ~(_O_TMPFILE | O_DIRECTORY)
        try:
            fd = os.open(path, flags)
        except OSError as e:
            raise SpiceError("files", f"can't open {self.describe()}: {e.strerror}") from None
        try:
            st = os.fstat(fd)
            if self.size is not None and stat.S_ISREG(st.st_mode) and st.st_size != self.size:
                raise SpiceError(
                    "files", f"{path} has size {st.st_size}, the image expects {self.size} (file changed?)"
                )
            if self.pos and not stat.S_ISCHR(st.st_mode):
                os.lseek(fd, self.pos, os.SEEK_SET)
            if self.flags & O_ASYNC or (self.fown is not None and (self.fown.pid or self.fown.signum)):
                from .eventfds import restore_file_params  # open(2) ignores O_ASYNC: fcntl sets it

                restore_file_params(fd, self.flags, self.fown, self.describe())
        except BaseException:
            os.close(fd)
            raise
        return fd


class MemfdFile(FileObj):
    """An fd of a memfd; the memory object itself is shared with any mappings of it."""

    pos: int = 0
    inode: ShmemPlan | None = None
    kind: ClassVar[str] = "memfd"

    def open(self, ctx: OpenContext) -> int:
        from .shmem import shmem_fd

        assert self.inode is not None
        fd = os.open(f"/proc/self/fd/{shmem_fd(ctx, self.inode)}", (self.flags & ~_NOT_REPLAYED) | O_CLOEXEC)
        os.lseek(fd, self.pos, os.SEEK_SET)
        return fd


class FdPlan(Record):
    fd: int
    file_id: int
    cloexec: bool
    file: FileObj = None  # type: ignore[assignment]


#: file_entry type name -> planner(entry, imgdir) -> FileObj; kinds register themselves here
PLANNERS: dict[str, Callable[[Any, ImageDir, dict[str, Any]], FileObj]] = {}


def planner(type_name: str):
    def reg(fn):
        PLANNERS[type_name] = fn
        return fn

    return reg


@planner("REG")
def _plan_reg(e, imgdir: ImageDir, state: dict[str, Any]) -> FileObj:
    r = e.reg
    f = RegFile(
        r.id,
        r.flags,
        path=r.name,
        pos=r.pos,
        size=r.size if r.HasField("size") else None,
        mode=r.mode if r.HasField("mode") else None,
        fown=r.fown,
    )
    remap = state["remaps"].get(r.id)
    if remap is not None:
        kind, remap_id = remap
        if kind != 1:  # LINKED (0) and PROCFS (2) remaps are not produced for host tasks here
            raise SpiceError("files", f"{r.name} (file id {r.id}): remap type {kind} not supported")
        ghosts = state.setdefault("ghosts", {})  # file ids of one deleted file share its remap id
        if remap_id not in ghosts:
            ghosts[remap_id] = _load_ghost(imgdir, remap_id)
        f.ghost = ghosts[remap_id]
        f.size = None
    return f


def _load_ghost(imgdir: ImageDir, remap_id: int) -> Ghost:
    img = codec.load(imgdir.file(f"ghost-file-{remap_id:x}.img"), expect="GHOST_FILE", lite=imgdir.lite)
    head = img.entries[0].msg
    if head.chunks:
        data = bytearray(head.size if head.HasField("size") else 0)
        for ch in img.entries[1:]:
            end = ch.msg.off + ch.msg.len
            if end > len(data):
                data.extend(b"\0" * (end - len(data)))
            data[ch.msg.off : end] = ch.extra
    else:
        data = img.entries[0].extra or b""
    times = None
    if head.HasField("atim") and head.HasField("mtim"):
        times = (head.atim.tv_sec * 10**9 + head.atim.tv_usec * 1000,
                 head.mtim.tv_sec * 10**9 + head.mtim.tv_usec * 1000)
    return Ghost(remap_id, bytes(data), head.mode, head.uid, head.gid, times)


@planner("MEMFD")
def _plan_memfd(e, imgdir: ImageDir, state: dict[str, Any]) -> FileObj:
    from .mm import plan_shmem

    m = e.memfd
    ino = state["memfd_inodes"].get(m.inode_id)
    if ino is None:
        raise ImageError(imgdir / "memfd.img", f"no inode {m.inode_id} for memfd file id {m.id}")
    sh = plan_shmem(imgdir, ino.shmid, ino.size, state["shmems"])
    sh.memfd, sh.name, sh.seals = True, ino.name, ino.seals
    return MemfdFile(m.id, m.flags, pos=m.pos, inode=sh)


#: file_entry type -> the module whose @planner handles it, imported only when an image needs it
KIND_MODULES = {
    "PIPE": "pipes",
    "FIFO": "pipes",
    "INETSK": "sockets",
    "UNIXSK": "sockets",
    "NETLINKSK": "sockets",
    "PACKETSK": "sockets",
    "EVENTFD": "eventfds",
    "EVENTPOLL": "eventfds",
    "TIMERFD": "eventfds",
    "SIGNALFD": "eventfds",
    "TTY": "tty",
    "INOTIFY": "fsnotify",
    "PIDFD": "pidfds",
}


def _planner_for(type_name: str):
    fn = PLANNERS.get(type_name)
    if fn is None and type_name in KIND_MODULES:
        __import__(f"{__package__}.{KIND_MODULES[type_name]}")  # importlib costs start-up (warnings...)
        fn = PLANNERS.get(type_name)
    return fn


def plan_files(imgdir: ImageDir, shmems: dict[int, ShmemPlan]) -> tuple[dict[int, FileObj], dict[str, Any]]:
    """Every object of files.img, planned; unsupported kinds become errors only when an fd uses them.

    Also returns the planning state (per-kind tables some objects need again when opened)."""
    state: dict[str, Any] = {
        "remaps": {m.orig_id: (m.remap_type, m.remap_id) for m in imgdir.entries("remap-fpath.img")},
        "memfd_inodes": {m.inode_id: m for m in imgdir.entries("memfd.img")},
        "shmems": shmems,
        "pipe_data": {},
    }
    type_names = lite.enum_names("fd_types")  # file_entry.type
    files: dict[int, FileObj] = {}
    for e in imgdir.entries("files.img", optional=False):
        tname = type_names.get(e.type, str(e.type))
        fn = _planner_for(tname)
        files[e.id] = fn(e, imgdir, state) if fn else Unsupported(e.id, 0, type_name=tname)
    state["files"] = files
    return files, state


class Unsupported(FileObj):
    """A file object restore cannot make: an error only if some fd uses it."""

    type_name: str = ""
    what: str = ""  # the object, when it was planned far enough to be described
    reason: str = ""  # what about it is not supported
    kind: ClassVar[str] = "unsupported file"

    def describe(self) -> str:
        return self.what or f"a {self.type_name} file (id {self.id})"

    def message(self) -> str:
        return f"{self.describe()}{': ' + self.reason if self.reason else ''}: not supported"

    def open(self, ctx: OpenContext) -> int:
        raise SpiceError("files", self.message())


def refuse(obj: FileObj, reason: str) -> FileObj:
    """obj, planned, turned into an error for whichever fd uses it: "<obj>: <reason>: not supported"."""
    return Unsupported(obj.id, obj.flags, what=obj.describe(), reason=reason)


def plan_fds(imgdir: ImageDir, pid: int, files_id: int, files: dict[int, FileObj]) -> list[FdPlan]:
    out = []
    for e in imgdir.entries(f"fdinfo-{files_id}.img"):
        f = files.get(e.id)
        if f is None:
            raise ImageError(imgdir / f"fdinfo-{files_id}.img", f"fd {e.fd} refers to unknown file id {e.id}")
        if isinstance(f, Unsupported):
            raise SpiceError("restore", f"task {pid}: fd {e.fd} is {f.message()}")
        out.append(FdPlan(e.fd, e.id, bool(e.flags & FD_CLOEXEC), f))
    return sorted(out, key=lambda p: p.fd)


def file_path(files: dict[int, FileObj], file_id: int, what: str) -> str:
    f = files.get(file_id)
    if not isinstance(f, RegFile):
        raise SpiceError("restore", f"{what}: file id {file_id} is not a regular file/directory")
    return f.path


def exists_or_error(path: str, what: str) -> None:
    if not os.path.exists(path):
        raise SpiceError("restore", f"{what}: {path} does not exist")


# ---------------------------------------------------------------- installing fd tables

_F_SETFD = 2


def install_fds(task, ctx: OpenContext) -> None:
    """Give the task exactly its dumped fd table: every object is opened in the restorer (once) and
    pulled into the task with pidfd_getfd(), then moved to its number with dup3().

    Two batches. The kernel hands out the lowest free fd number, and nothing else opens fds in the
    task meanwhile, so the numbers pidfd_getfd() will return are known in advance."""
    from ..linux.syscalls import NR
    from .task import PIDS, restorer_pidfd_call

    plans = task.plan.fds
    ours = [ctx.fd_of(p.file_id) for p in plans]
    b = task.batch()
    keep = PIDS.restorer_fd  # (a pidfd of the restorer kept until finish_task: restore/task.py)
    b.add(NR.close_range, 0, keep - 1 if keep > 0 else 0xFFFFFFFF, 0, what="close inherited fds")
    if keep > 0:
        b.add(NR.close_range, keep + 1, 0xFFFFFFFF, 0, what="close inherited fds")
    b.add(*restorer_pidfd_call(), what="pidfd of the restorer")
    pidfd = b.run()[-1]
    task.reset_scratch()
    wanted = {p.fd for p in plans}
    held = {keep} if keep > 0 else set()
    used = {pidfd} | held
    b = task.batch()
    if pidfd in wanted:
        spare = max(wanted | held) + 1
        b.add(NR.dup3, pidfd, spare, O_CLOEXEC, what="move pidfd")
        b.add(NR.close, pidfd, what="close")
        used = {spare} | held
        pidfd = spare
    for p, ours_fd in zip(plans, ours, strict=True):
        got = min(set(range(len(used) + 1)) - used)  # the lowest free number
        b.add(NR.pidfd_getfd, pidfd, ours_fd, 0, what=f"pidfd_getfd for fd {p.fd}")
        if got != p.fd:
            b.add(NR.dup3, got, p.fd, O_CLOEXEC if p.cloexec else 0, what=f"dup3 to fd {p.fd}")
            b.add(NR.close, got, what="close")
        elif not p.cloexec:
            b.add(NR.fcntl, got, _F_SETFD, 0, what=f"fcntl(fd {p.fd})")
        used.add(p.fd)
    b.add(NR.close, pidfd, what="close pidfd")
    b.run()
    task.reset_scratch()
    for p in plans:
        if p.file.needs_task_setup():
            p.file.setup_in_task(task, p.fd, ctx)
    ctx.run_hooks("task_hooks", task)


def pull_fd(task, ours_fd: int) -> int:
    """A temporary copy of one of the restorer's fds inside the task (closed by the caller)."""
    from ..linux.syscalls import NR
    from .task import restorer_pidfd_call

    pidfd = task.sys(*restorer_pidfd_call(), what="pidfd of the restorer")
    try:
        return task.sys(NR.pidfd_getfd, pidfd, ours_fd, 0, what="pidfd_getfd")
    finally:
        task.sys(NR.close, pidfd, what="close pidfd")


def install_fs(task, ctx: OpenContext) -> None:
    """cwd, root and umask. Both paths are as seen from the mount namespace's root: chdir first,
    chroot (which leaves the cwd alone) second. A deleted cwd is entered through its ghost."""
    from ..linux.syscalls import NR

    t = task.plan
    b = task.batch()
    cwd = ctx.ghost_path(t.cwd_id) or t.cwd
    b.add(NR.chdir, task.put_str(cwd), what=f"chdir({t.cwd})")
    if t.root != "/":
        b.add(NR.chroot, task.put_str(t.root), what=f"chroot({t.root})")
    b.add(NR.umask, t.umask, what="umask")
    b.run()
    task.reset_scratch()
