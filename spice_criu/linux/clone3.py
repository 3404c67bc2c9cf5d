# SPDX-License-Identifier: MIT
"""clone3(2) with `struct clone_args`, including set_tid (restore re-creates tasks with their PIDs).

`fork()` is a fork that returns twice *in Python*, like os.fork(), but through clone3 so that the
child can get a chosen PID (set_tid, one entry per PID-namespace level) or land in a cgroup.

Caveats of fork() (what os.fork does that a raw clone3 cannot):
- glibc's own fork bookkeeping is skipped: pthread_atfork handlers do not run and malloc/stdio locks
  are not reset, so call it only from a single-threaded process (checked: RuntimeError otherwise;
  this is also what CRIU's restorer assumes). Python-level at-fork hooks (os.register_at_fork) and
  the interpreter's own reinitialisation do run (PyOS_BeforeFork/AfterFork_*).
- glibc's cached TID in the thread descriptor is fixed up with CLONE_CHILD_SETTID (located through
  libc's `_thread_db_pthread_tid` descriptor) and the robust-futex list is re-registered, as glibc's
  fork does; if the descriptor is missing, pthread mutex owner checks in the child see the old TID.
- set_tid needs CAP_CHECKPOINT_RESTORE (or CAP_SYS_ADMIN) in the owning user namespace of every
  PID namespace it names; EEXIST when the PID is taken, EINVAL when above pid_max.
- CLONE_VM / CLONE_THREAD / a custom stack make no sense here (the child would share or lack the
  Python stack): use `clone3()` with those only from code that controls the child's first
  instructions, e.g. inside a target through inject.Remote.
"""

from __future__ import annotations

import ctypes
import os

from .signals import SIGCHLD
from .syscalls import NR, c_long, fresh, libc, pylibc, raise_errno, syscall

TYPE_CHECKING = False  # typing costs ~10 ms of start-up; annotations are strings
if TYPE_CHECKING:
    from collections.abc import Sequence

CLONE_NEWTIME = 0x80
CLONE_VM = 0x100
CLONE_FS = 0x200
CLONE_FILES = 0x400
CLONE_SIGHAND = 0x800
CLONE_PIDFD = 0x1000
CLONE_PTRACE = 0x2000
CLONE_VFORK = 0x4000
CLONE_PARENT = 0x8000
CLONE_THREAD = 0x10000
CLONE_NEWNS = 0x20000
CLONE_SYSVSEM = 0x40000
CLONE_SETTLS = 0x80000
CLONE_PARENT_SETTID = 0x100000
CLONE_CHILD_CLEARTID = 0x200000
CLONE_DETACHED = 0x400000
CLONE_UNTRACED = 0x800000
CLONE_CHILD_SETTID = 0x1000000
CLONE_NEWCGROUP = 0x2000000
CLONE_NEWUTS = 0x4000000
CLONE_NEWIPC = 0x8000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_IO = 0x80000000
CLONE_CLEAR_SIGHAND = 0x100000000
CLONE_INTO_CGROUP = 0x200000000

CLONE_ARGS_SIZE_VER0 = 64
CLONE_ARGS_SIZE_VER1 = 80  # + set_tid, set_tid_size (5.5)
CLONE_ARGS_SIZE_VER2 = 88  # + cgroup (5.7)
MAX_PID_NS_LEVEL = 32


class CloneArgs(ctypes.Structure):
    """struct clone_args (include/uapi/linux/sched.h)."""

    _fields_ = [(n, ctypes.c_uint64) for n in ("flags", "pidfd", "child_tid", "parent_tid", "exit_signal",
                                                "stack", "stack_size", "tls", "set_tid", "set_tid_size",
                                                "cgroup")]


assert ctypes.sizeof(CloneArgs) == CLONE_ARGS_SIZE_VER2


def clone3(args: CloneArgs, size: int = CLONE_ARGS_SIZE_VER2) -> int:
    """The raw syscall in this process. Returns twice without CLONE_VM; see fork() for Python."""
    return syscall(NR.clone3, ctypes.addressof(args), size)


def make_args(flags: int = 0, exit_signal: int = SIGCHLD, set_tid: Sequence[int] = (),
              set_tid_addr: int = 0, cgroup_fd: int | None = None, **fields: int) -> CloneArgs:
    """A CloneArgs; set_tid's array must live at set_tid_addr (e.g. in a Remote scratch area)."""
    a = CloneArgs(flags=flags, exit_signal=exit_signal, **fields)
    if set_tid:
        if not set_tid_addr:
            raise ValueError("set_tid needs the address of the pid array")
        a.set_tid, a.set_tid_size = set_tid_addr, len(set_tid)
    if cgroup_fd is not None:
        a.flags |= CLONE_INTO_CGROUP
        a.cgroup = cgroup_fd
    return a


def pack_set_tid(set_tid: Sequence[int]) -> bytes:
    """The pid_t array clone_args.set_tid points to (innermost namespace first)."""
    return bytes((ctypes.c_int32 * len(set_tid))(*set_tid))


_py_clone3 = fresh(pylibc, "syscall", c_long, [c_long, c_long, c_long])
_api = ctypes.pythonapi
for _name in ("PyOS_BeforeFork", "PyOS_AfterFork_Parent", "PyOS_AfterFork_Child"):
    getattr(_api, _name).restype = None
    getattr(_api, _name).argtypes = []

_pthread_self = fresh(libc, "pthread_self", ctypes.c_void_p, [])


def _tid_offset() -> int | None:
    try:
        desc = (ctypes.c_uint32 * 3).in_dll(libc, "_thread_db_pthread_tid")
    except ValueError:
        return None
    return desc[2] if desc[0] == 32 and desc[1] == 1 else None


_TID_OFFSET = _tid_offset()


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def fork(set_tid: Sequence[int] = (), flags: int = 0, exit_signal: int = SIGCHLD,
         cgroup_fd: int | None = None) -> int:
    """clone3-based fork usable from Python: returns the child's PID in the parent, 0 in the child.

    set_tid=[pid] asks for that PID (innermost PID namespace first for nested namespaces).
    """
    if flags & (CLONE_VM | CLONE_THREAD | CLONE_VFORK | CLONE_SETTLS):
        raise ValueError("fork() cannot share the address space or the thread group")
    if _threads() != 1:
        raise RuntimeError("clone3.fork() needs a single-threaded process")
    tids = (ctypes.c_int32 * max(1, len(set_tid)))(*set_tid)
    args = make_args(flags, exit_signal, set_tid, ctypes.addressof(tids) if set_tid else 0, cgroup_fd)
    if _TID_OFFSET is not None:
        args.flags |= CLONE_CHILD_SETTID | CLONE_CHILD_CLEARTID
        args.child_tid = _pthread_self() + _TID_OFFSET
    head, hlen = ctypes.c_void_p(), ctypes.c_size_t()
    syscall(NR.get_robust_list, 0, ctypes.addressof(head), ctypes.addressof(hlen))
    _api.PyOS_BeforeFork()
    ret = _py_clone3(NR.clone3, ctypes.addressof(args), ctypes.sizeof(args))
    if ret == 0:
        if head.value:
            syscall(NR.set_robust_list, head.value, hlen.value)
        _api.PyOS_AfterFork_Child()
        return 0
    err = ctypes.get_errno()
    _api.PyOS_AfterFork_Parent()
    if ret < 0:
        raise_errno("clone3", err)
    return ret
