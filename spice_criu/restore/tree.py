# SPDX-License-Identifier: MIT
"""The process tree: every task re-created with its original PID, parent, session and group.

The root is started by a vfork-style clone3(set_tid) as the stub (stub.py) and parks in pause()
until seized; every other task is forked (clone3 with set_tid, injected) by its own parent, so
parentage comes out right. Session leaders setsid() (and get their controlling terminal back)
before forking their children, so those inherit both; process groups are joined once every task
exists.

A tree with a pid namespace of its own (a container, `unshare -p -f`): the root is cloned into a new
one (CLONE_NEWPID) whose init it becomes (pid 1, as dumped), and every other task is forked inside
it with set_tid = its pid there. The plan keeps those pids; the restorer reaches each task by its
pid in our namespace (TaskCtl.pid, from the fork event we see as its tracer; see restore/task.py).
"""

from __future__ import annotations

import errno
import fcntl
import os
import resource

from ..errors import SpiceError
from ..linux import clone3, ptrace
from ..linux.signals import SIGCHLD, SIGKILL
from ..linux.syscalls import NR
from . import namespaces, stub
from .plan import RestorePlan, TaskPlan
from .task import PIDS, TRAMPOLINE_SIZE, TaskCtl, wait_first_stop
from .threads import clone_args, cloned_host_pid

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

# SUSPEND_SECCOMP: restored seccomp filters must not filter the syscalls we still inject
TRACE_OPTIONS = (ptrace.O_TRACESYSGOOD | ptrace.O_TRACEFORK | ptrace.O_TRACECLONE | ptrace.O_EXITKILL
                 | ptrace.O_SUSPEND_SECCOMP)


def _top_fd(plan: RestorePlan) -> int:
    """An fd number above every fd of the images' tasks."""
    return max((p.fd for t in plan.tasks for p in t.fds), default=2) + 1


def spawn_root(t: TaskPlan, sibling: bool, ns_flags: int = 0, top_fd: int = 3) -> TaskCtl:
    """Start the root with its PID as the stub (stub.py), parked in pause() until we hold it
    under ptrace: a vfork-style clone3(set_tid) + exec, nothing of the restorer copied. ns_flags:
    the tree's own namespaces (CLONE_NEW*) it is cloned into; in a new pid namespace it is its
    init, pid 1 there (the plan checked that is its pid) and whatever pid here."""
    stub_fd = stub.program()
    set_tid = [] if ns_flags & namespaces.CLONE_NEWPID else [t.pid]
    if not set_tid:  # it could not name us for pidfd_open: it inherits a pidfd of us (PIDS.restorer_fd)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and soft <= top_fd < hard:  # (criu raises its own limit too)
            resource.setrlimit(resource.RLIMIT_NOFILE, (top_fd + 1, hard))
        ours = os.pidfd_open(os.getpid())
        try:
            PIDS.restorer_fd = fcntl.fcntl(ours, fcntl.F_DUPFD, top_fd)  # (not close-on-exec)
        except OSError as e:
            os.close(stub_fd)
            raise SpiceError("restore", f"can't keep a pidfd for task {t.pid} at fd {top_fd} or above "
                                        f"(above its fds): {e.strerror}") from None
        finally:
            os.close(ours)
    try:
        def spawn(share_vm: bool = True) -> int:
            # with CLONE_PARENT the child inherits our exit signal: clone3 wants exit_signal 0 then
            return clone3.spawn_exec(stub_fd, [stub.NAME.encode()], set_tid=set_tid,
                                     flags=ns_flags | (clone3.CLONE_PARENT if sibling else 0),
                                     exit_signal=0 if sibling else SIGCHLD, share_vm=share_vm)

        try:
            try:
                pid = spawn()
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
                pid = spawn(share_vm=False)  # older kernels (6.1): no CLONE_VM into a new time namespace
        except OSError as e:
            if e.errno == 17:
                raise SpiceError("restore", f"pid {t.pid} is already taken by another process") from None
            raise SpiceError("restore", f"can't fork for {t.pid}: {e.strerror}") from None
        try:
            ptrace.seize(pid, TRACE_OPTIONS)
            ptrace.interrupt(pid)
            wait_first_stop(pid)
            if not _is_stub(pid, stub_fd):
                raise SpiceError("restore", f"task {t.pid} could not exec the restore stub")
        except BaseException:
            os.kill(pid, SIGKILL)
            raise
    finally:
        os.close(stub_fd)
        if PIDS.restorer_fd >= 0:
            os.close(PIDS.restorer_fd)
    return TaskCtl(t, pid)


def _is_stub(pid: int, stub_fd: int) -> bool:
    """The task runs the stub (its exe is the file behind stub_fd)."""
    try:
        a, b = os.stat(f"/proc/{pid}/exe"), os.fstat(stub_fd)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def spawn_child(parent: TaskCtl, t: TaskPlan) -> TaskCtl:
    """clone3(set_tid=[pid]) inside the parent stub (pid as the parent sees it: in the tree's pid
    namespace): the child comes up traced and stopped."""
    tids = parent.put(clone3.pack_set_tid([t.pid]))
    args = parent.put(clone_args(0, tids, SIGCHLD))
    parent.remote.events.clear()
    got = parent.remote.syscall(NR.clone3, args, 88)
    parent.reset_scratch()
    if got == -17:
        raise SpiceError("restore", f"pid {t.pid} is already taken by another process")
    if got != t.pid:
        raise SpiceError("restore", f"can't fork for {t.pid}: {os.strerror(-got) if got < 0 else got}")
    host = cloned_host_pid(parent.remote, got)
    wait_first_stop(host)
    child = TaskCtl(t, host)
    child.use_trampoline(parent.tramp)
    return child


def create_tree(plan: RestorePlan, sibling: bool, created: list[TaskCtl],
                new_session: Callable[[TaskCtl], None] | None = None,
                on_root: Callable[[TaskCtl], None] | None = None) -> dict[int, TaskCtl]:
    """All tasks, stopped, with PIDs, sessions and groups. `created` collects them as they appear
    (so a failure half-way can kill exactly what exists). new_session(leader) runs right after a
    session leader's setsid(), before its children exist (which inherit its controlling terminal);
    on_root(root) right after the root exists, in the tree's own namespaces (restore/namespaces.py)."""
    ctls: dict[int, TaskCtl] = {}  # by the images' pids
    PIDS.reset("pid" in plan.own_ns)
    targets = {t.pid: [(v.start, v.end) for v in t.mm.vmas] for t in plan.tasks}
    for t in plan.tasks:
        if t is plan.root:
            ctl = spawn_root(t, sibling, namespaces.clone_flags(plan), _top_fd(plan))
        else:
            ctl = spawn_child(ctls[t.ppid], t)
        created.append(ctl)
        ctls[t.pid] = ctl
        if not ctl.tramp or any(lo < ctl.tramp + TRAMPOLINE_SIZE and hi > ctl.tramp for lo, hi in targets[t.pid]):
            ctl.map_trampoline(targets[t.pid])
        if t is plan.root and on_root is not None:
            on_root(ctl)
        if t.sid == t.pid:
            ctl.sys(NR.setsid, what="setsid")
            if new_session is not None:
                new_session(ctl)
        elif t.pgid == t.pid:
            ctl.sys(NR.setpgid, 0, 0, what="setpgid")
    for t in plan.tasks:
        if t.pgid != t.pid and os.getpgid(ctls[t.pid].pid) != PIDS.host(t.pgid):
            ctls[t.pid].sys(NR.setpgid, 0, t.pgid, what=f"setpgid({t.pgid})")
    return ctls


RLIMIT_CORE = 4
_U64 = (1 << 64) - 1


def exit_as_zombie(ctl: TaskCtl) -> None:
    """CRIU's restore_one_zombie: a task that was a zombie when dumped exits again the way it did
    (exit status, or killed by its signal: default action, unblocked, no core file written), while
    its parent is still held; the parent reaps it after the resume, as it would have."""
    status = ctl.plan.tc.exit_code
    sig = status & 0x7F
    if sig:
        ctl.sys(NR.rt_sigaction, sig, ctl.put(bytes(32)), 0, 8, what=f"zombie: SIG_DFL for {sig}")
        ctl.sys(NR.prlimit64, 0, RLIMIT_CORE, ctl.put(bytes(16)), 0, what="zombie: no core file")
        ptrace.setsigmask(ctl.pid, 0)
        nr, args = NR.kill, (ctl.plan.pid, sig)  # (the task's own pid, as it sees it)
    else:
        nr, args = NR.exit_group, ((status >> 8) & 0xFF, 0)
    regs = ptrace.getregs(ctl.pid)
    regs.ip, regs.ax, regs.orig_ax = ctl.tramp, nr, _U64  # the trampoline starts with `syscall`
    regs.di, regs.si = args
    ptrace.setregs(ctl.pid, regs)
    ptrace.cont(ctl.pid, 0)
    while True:  # as its tracer we hear of the death first; collecting it hands it to its parent
        st = ptrace.waitpid(ctl.pid)
        if st.gone:
            break
        ptrace.cont(ctl.pid, st.stopsig if st.signal_stop else 0)
    got = st.termsig if st.signaled else st.exit_code << 8
    if got != (status & 0xFF7F):
        raise SpiceError("restore", f"zombie {ctl.pid}: exited with status {got:#x}, not {status:#x}")
