# SPDX-License-Identifier: MIT
"""clone3(2) with `struct clone_args`, including set_tid (restore re-creates tasks with their PIDs).

`spawn_exec()` starts a program as a child with a chosen PID (set_tid, one entry per PID-namespace
level), the way posix_spawn starts one: vfork-style, so nothing of this (large, Python) process is
copied. set_tid needs CAP_CHECKPOINT_RESTORE (or CAP_SYS_ADMIN) in the owning user namespace of
every PID namespace it names; EEXIST when the PID is taken, EINVAL when above pid_max.
`clone3()` with CLONE_VM / CLONE_THREAD / a custom stack belongs in code that controls the
child's first instructions, e.g. inside a target through inject.Remote.
"""

from __future__ import annotations

import ctypes

from .. import once
from .signals import SIGCHLD
from .syscalls import NR, c_long, raise_errno, syscall

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


# vfork-style clone3 + execveat, in machine code: the child shares our memory (no page tables
# copied) and must not run any Python or C library code before its exec, so it never leaves these
# instructions. long spawn(args rdi, size rsi, fd rdx, argv rcx, envp r8)
_SPAWN_HEAD = bytes.fromhex(
    "4989d1"  # mov r9, rdx        (fd; syscall keeps r8-r10)
    "4989ca"  # mov r10, rcx       (argv)
    "b8b3010000"  # mov eax, 435 (clone3)
    "0f05"  # syscall
    "4885c0"  # test rax, rax
    "7401"  # jz child
    "c3"  # ret                   (the parent: pid or -errno)
    # child: execveat(fd, "", argv, envp, AT_EMPTY_PATH); exit_group(127) if it returns
    "b842010000"  # mov eax, 322 (execveat)
    "4c89cf"  # mov rdi, r9
    "488d35"  # lea rsi, [rip + disp32] -> the NUL byte after the code
)
_SPAWN_TAIL = bytes.fromhex(
    "4c89d2"  # mov rdx, r10
    "4d89c2"  # mov r10, r8
    "41b800100000"  # mov r8d, 0x1000 (AT_EMPTY_PATH)
    "0f05"  # syscall
    "bf7f000000"  # mov edi, 127
    "b8e7000000"  # mov eax, 231 (exit_group)
    "0f05"  # syscall
    "0f0b"  # ud2
)


def _spawn_code() -> bytes:
    disp = len(_SPAWN_TAIL)  # the NUL byte right after the tail, relative to the end of the lea
    return _SPAWN_HEAD + disp.to_bytes(4, "little") + _SPAWN_TAIL + b"\0"


@once
def _spawner():
    from .mman import machine_code

    return machine_code(_spawn_code(), c_long, ctypes.c_void_p, ctypes.c_size_t, c_long, ctypes.c_void_p,
                        ctypes.c_void_p)


_ALL_SIGNALS = (ctypes.c_uint64 * 1)((1 << 64) - 1)
_SIG_SETMASK = 2


def spawn_exec(fd: int, argv: Sequence[bytes], set_tid: Sequence[int] = (), flags: int = 0,
               exit_signal: int = SIGCHLD, share_vm: bool = True) -> int:
    """Start a child that execs the program in `fd` (execveat AT_EMPTY_PATH, empty environment), as
    posix_spawn does: clone3(CLONE_VM | CLONE_VFORK), so nothing of this process is copied and the
    call returns once the child has exec'd (or died trying: it exits with 127). Unlike posix_spawn
    it takes set_tid, CLONE_PARENT... The child starts with every signal blocked (no handler of ours
    may run in it before the exec) and keeps that mask through the exec. Returns the child's PID.

    share_vm=False leaves CLONE_VM out (the child gets a copy of our page tables, still runs only
    the spawn code): older kernels (6.1) refuse CLONE_VM into another time namespace (EINVAL)."""
    if flags & (CLONE_VM | CLONE_THREAD | CLONE_VFORK | CLONE_SETTLS | CLONE_SIGHAND):
        raise ValueError("spawn_exec() sets CLONE_VM | CLONE_VFORK itself and shares nothing else")
    tids = (ctypes.c_int32 * max(1, len(set_tid)))(*set_tid)
    args = make_args(flags | (CLONE_VM if share_vm else 0) | CLONE_VFORK, exit_signal, set_tid,
                     ctypes.addressof(tids) if set_tid else 0)
    arr = (ctypes.c_char_p * (len(argv) + 1))(*argv, None)
    envp = (ctypes.c_char_p * 1)(None)
    old = (ctypes.c_uint64 * 1)()
    syscall(NR.rt_sigprocmask, _SIG_SETMASK, ctypes.addressof(_ALL_SIGNALS), ctypes.addressof(old), 8)
    try:
        ret = _spawner()(ctypes.addressof(args), ctypes.sizeof(args), fd, ctypes.addressof(arr),
                         ctypes.addressof(envp))
    finally:
        syscall(NR.rt_sigprocmask, _SIG_SETMASK, ctypes.addressof(old), 0, 8)
    if ret < 0:
        raise_errno("clone3", -ret)
    return ret
