# SPDX-License-Identifier: MIT
"""`spice restore`: images -> plan -> tasks built by a backend -> everything resumed together.

Order per task (signals blocked throughout; credentials, then seccomp, last; registers and the
dumped signal masks at the very end): fds -> memory + sigactions (backend; files are opened by
their mount-namespace paths, so before any chroot) -> cwd/root/umask -> threads -> per-thread
kernel state, signals, names -> timers, rlimits and other knobs -> pending signals -> credentials
and seccomp -> CPU state -> masks.
A failure anywhere kills every task created so far and reaps it: nothing half-restored survives.
"""

from __future__ import annotations

import os
import time

from ..cli import Options
from ..errors import SpiceError
from ..faults import fault_point
from ..images import codec, stats
from ..linux import prctl, ptrace
from ..linux.signals import SIGKILL, SIGSTOP
from ..linux.syscalls import NR
from ..log import log
from . import cgroups, creds, namespaces, signals, threads, timens, timers
from .backends import DEVICE, module_loaded
from .backends import ptrace as ptrace_backend
from .files import OpenContext, install_fds, install_fs
from .plan import TASK_STOPPED, RestorePlan, build_plan
from .task import PIDS, TaskCtl
from .tree import create_tree, exit_as_zombie


def parse_inherit(specs: list[str]) -> dict[str, int]:
    """--inherit-fd fd[N]:KEY -> {KEY: N}: the restored fds matching KEY use our fd N instead."""
    out = {}
    for s in specs:
        if not s.startswith("fd[") or "]:" not in s:
            raise SpiceError("restore", f"bad --inherit-fd {s!r} (want fd[N]:KEY)")
        num, key = s[3:].split("]:", 1)
        try:
            fd = int(num)
            os.fstat(fd)
        except (ValueError, OSError):
            raise SpiceError("restore", f"--inherit-fd {s}: fd {num} is not open") from None
        out[key] = fd
    return out


def choose_backend(name: str, record: bool = False):
    """--backend auto|ptrace|kmod: kmod when /dev/spice answers SPICE_IOC_VERSION with our ABI."""
    if name == "ptrace":
        if record:
            raise SpiceError("restore", "--record-working-set needs the kmod backend, not --backend ptrace")
        log.info("restore backend: ptrace")
        return ptrace_backend
    if name == "auto" and not record and not module_loaded():
        log.info(f"restore backend: ptrace ({DEVICE}: module not loaded)")
        return ptrace_backend  # without the module, its backend need not even be imported
    from .backends import kmod

    usable, why = kmod.probe()
    if usable:
        log.info(f"restore backend: kmod ({DEVICE}, ABI {kmod.ABI_VERSION})")
        return kmod.Backend(strict=name == "kmod", record=record)
    if name == "kmod" or record:
        raise SpiceError("restore", f"{'--backend kmod' if name == 'kmod' else '--record-working-set'}: {why}")
    log.info(f"restore backend: ptrace ({why})")
    return ptrace_backend


def restore_task(ctl: TaskCtl, ctx: OpenContext, backend) -> int:
    t = ctl.plan
    # nothing may be delivered while the task is half-built (its timers fire, signals get queued):
    # everything stays pending until the dumped masks are set, just before resume
    ptrace.setsigmask(ctl.pid, signals.ALL_SIGNALS)
    install_fds(ctl, ctx)
    pages = backend.install_core(ctl, ctx)  # opens files by their paths: before any chroot
    install_fs(ctl, ctx)
    for th in t.threads[1:]:
        threads.create_thread(ctl, th.tid)  # a new thread inherits the all-blocked mask
    for th in t.threads:
        b = ctl.batch()
        threads.queue_thread_kernel_state(b, th)
        signals.queue_thread_signals(ctl, b, th.tid, th.core)
        creds.install_thread_knobs(ctl, b, th.tid, th.core)
        b.run(th.tid)
        ctl.reset_scratch()
    timers.install_itimers(ctl)
    timers.install_posix_timers(ctl)
    creds.install_task_knobs(ctl)
    signals.install_shared_pending(ctl)
    for th in t.threads:
        creds.install_creds(ctl, th.tid, th.core)
    return pages


def finish_task(ctl: TaskCtl, backend) -> None:
    """CPU state of every thread (the leader's last injected syscall unmaps the trampoline), then
    the dumped signal masks: only now, when no syscall will be injected any more, may the signals
    that piled up meanwhile be delivered (after resume, into the restored context)."""
    t = ctl.plan
    if PIDS.restorer_fd >= 0:  # (the task's pidfd of us, in a pid namespace of the tree's own)
        ctl.sys(NR.close, PIDS.restorer_fd, what="close the restorer's pidfd")
    for th in t.threads[1:]:
        threads.set_cpu_state(th, ctl.host_tid(th.tid))
    backend.finish_leader(ctl)
    for th in t.threads:
        signals.set_blocked(ctl.host_tid(th.tid), th.core)


def kill_all(ctls: list[TaskCtl]) -> None:
    """SIGKILL every task created so far and reap it (the restorer is their subreaper meanwhile,
    so tasks orphaned by the kill are reaped here too): nothing half-restored survives."""
    for c in ctls:
        try:
            os.kill(c.pid, SIGKILL)
        except ProcessLookupError:
            pass
    # a tracer hears of a tracee's death before its parent reaps it, and orphans come to us: wait
    # until no child is left at all (the restorer has no other children while it restores)
    while True:
        try:
            os.waitpid(-1, ptrace.WALL)
        except ChildProcessError:
            break


def resume(ctls: list[TaskCtl]) -> None:
    for c in ctls:
        if c.plan.zombie:
            continue
        stop = SIGSTOP if c.plan.state == TASK_STOPPED else 0
        for tid in c.threads:
            ptrace.detach(c.host_tid(tid), stop)


def write_pidfile(path: str, workdir: str, pid: int) -> None:
    full = path if os.path.isabs(path) else os.path.join(workdir, path)
    try:
        fd = os.open(full, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise SpiceError("restore", f"can't create pidfile {full}: {e.strerror}") from None
    with os.fdopen(fd, "w") as f:
        f.write(str(pid))


def restore_plan(plan: RestorePlan, o: Options, backend, cg_moves: list[cgroups.Move],
                 cg_dirs: list[str]) -> tuple[list[TaskCtl], int, float]:
    """Build every task; on return all of them are fully restored and still stopped.

    Returns (tasks, pages restored, seconds spent forking). On failure every task is killed and the
    cgroups made for them are removed (cg_dirs collects those, for the caller to undo a later
    failure too)."""
    # --root is where the tree's own mount namespace is built (restore/mntns.py then sets ctx.root);
    # without one criu does not use it either
    ctx = OpenContext(plan.imgdir, root=o.root or "/" if "mnt" in plan.own_ns else "/",
                      inherit=parse_inherit(o.inherit_fd))
    ctx.files = plan.files
    ctx.state = plan.file_state
    ctx.options = o
    created: list[TaskCtl] = []
    prctl.set_child_subreaper(True)
    try:
        t0 = time.monotonic()
        timens.enter(plan)  # every task is created in it
        create_tree(plan, o.restore_sibling, created, new_session=lambda ctl: ctx.run_hooks("session_hooks", ctl),
                    on_root=lambda ctl: namespaces.setup(plan, ctl, ctx))
        log.info(f"tree of {len(created)} tasks created")
        fault_point("restore-tree")
        if cg_moves:
            cgroups.apply([cgroups.Move(PIDS.host(m.pid), m.hierarchy, m.mount, m.path, m.dumped) for m in cg_moves],
                          cg_dirs)  # (the images' pids -> ours: cgroup.procs reads them in our namespace)
            fault_point("restore-cgroups")
        forking = time.monotonic() - t0
        pages = 0
        for ctl in created:
            if ctl.plan.zombie:
                continue
            pages += restore_task(ctl, ctx, backend)
            log.info(f"task {ctl.pid} restored")
            fault_point("restore-task")
        for ctl in created:
            if ctl.plan.zombie:
                exit_as_zombie(ctl)
                log.info(f"task {ctl.pid} restored as a zombie (status {ctl.plan.tc.exit_code:#x})")
            else:
                finish_task(ctl, backend)
        ctx.complete()
        fault_point("restore-finish")
        return created, pages, forking
    except BaseException:
        kill_all(created)
        cgroups.undo(cg_dirs)
        raise
    finally:
        prctl.set_child_subreaper(False)
        ctx.close_all()


def restore(o: Options) -> int:
    # restore_time starts where CRIU's does, after start-up: CRIU's schemas are compiled into its
    # binary, ours are a table to import and light classes to build first (protobuf is never imported)
    codec.preload(lite=True)
    t0 = time.monotonic()
    if o.record_working_set:
        from . import workingset

        workingset.block_stop_signals()
    if o.restore_sibling and not o.restore_detached:
        raise SpiceError("restore", "--restore-sibling only makes sense with --restore-detached")
    plan = build_plan(o.images_dir, root=o.root or "/")
    log.info(f"plan: {len(plan.tasks)} tasks, {plan.pages_total} pages")
    if plan.inventory.tcp_close and not o.tcp_close:
        raise SpiceError("restore", "Need to set the --tcp-close options.")  # criu's words (image.c)
    if o.shell_job:
        root = plan.root
        root.sid, root.pgid = os.getsid(0), os.getpgid(0)
    elif plan.root.sid != plan.root.pid:
        raise SpiceError("restore", f"task {plan.root.pid} is not a session leader: restore with --shell-job")
    cg_moves = cgroups.plan_moves(plan, o.manage_cgroups, o.cgroup_root)
    backend = choose_backend(o.backend, o.record_working_set)
    o.run_script("pre-restore")
    cg_dirs: list[str] = []
    ctls, pages, forking = restore_plan(plan, o, backend, cg_moves, cg_dirs)
    root_pid = ctls[0].pid  # ours, as criu reports it (the root is pid 1 in a pid namespace of its own)
    restore_time = time.monotonic() - t0
    try:
        fault_point("restore-resume")
        o.run_script("post-restore", root_pid)
        if o.pidfile:
            write_pidfile(o.pidfile, o.work_dir or o.images_dir, root_pid)
        stats.write(
            o.work_dir or o.images_dir, "restore",
            pages_compared=0, pages_skipped_cow=0, forking_time=int(forking * 1e6),
            restore_time=int(restore_time * 1e6), pages_restored=pages,
        )
        o.run_script("pre-resume")
    except BaseException:
        kill_all(ctls)
        cgroups.undo(cg_dirs)
        raise
    resume(ctls)
    log.info(f"Restore finished successfully. Tasks resumed. ({restore_time * 1e3:.1f} ms)")
    o.run_script("post-resume")
    if o.record_working_set:
        workingset.record(plan, o.record_timeout)
    if o.display_stats:
        print(stats.display("restore", stats.read(os.path.join(o.work_dir or o.images_dir, "stats-restore"))), end="")
    if not o.restore_detached:
        _wait_tree(root_pid)
    return 0


def _wait_tree(pid: int) -> None:
    """Without -d criu stays the restored root's parent until it exits (its status is not propagated)."""
    while True:
        try:
            p, _ = os.waitpid(-1, 0)
        except ChildProcessError:
            return
        except InterruptedError:
            continue
        if p == pid:
            return
