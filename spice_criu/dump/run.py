# SPDX-License-Identifier: MIT
"""`spice dump`: freeze the tree, collect every object kind, write the images, let the tree go.

Per task, in CRIU's order (so object ids come out the same): state only the task can report, read by
syscalls injected into each thread (inject.Remote puts registers and memory back exactly) -> kernel
object ids -> mappings (their files, shared memory contents) -> fds -> pending signals, registers ->
private memory -> cores -> mm (exe) -> fs (cwd, root). Then the tree-wide images and inventory.img
last. Any failure at any step resumes every task exactly as it was and leaves the image directory
marked partial; success kills the tree (criu's default), or leaves it running or stopped.
"""

from __future__ import annotations

import os
import time

from ..cli import Options
from ..errors import SpiceError
from ..images import codec
from ..images import stats as stats_img
from ..images.lite import Message
from ..inject import Remote, TaskGone, read_maps
from ..linux import ptrace as pt
from ..linux.signals import SIGKILL
from ..log import log
from . import creds, files, ids, inventory, mm, pages, proc, seccomp, seize, shmem, signals, threads, timers, tree
from . import namespaces as nsdump
from .cgroups import Cgroups
from .imgset import ImageSet
from .intask import SCRATCH_SIZE, Batch

TYPE_CHECKING = False  # typing costs ~10 ms of start-up; annotations are strings
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from .tcp import TcpDump

X86_64 = 1
#: SPICE_DUMP_FAULT=<step>[:kill|:stall]: fail (or SIGKILL spice, or stall) at that step, for the
#: never-lose-the-target tests, like CRIU's CRIU_FAULT
FAULT_ENV = "SPICE_DUMP_FAULT"
FAULT_STEPS = ("frozen", "in-task", "mappings", "files", "tcp-locked", "pages", "cores", "images", "commit")


class DumpContext:
    """One dump's options, images and the id/counter state shared by every collector."""

    def __init__(self, opts: Options, images: ImageSet, shmem_dev: int = 0) -> None:
        self.opts = opts
        self.images = images
        self.files = files.FileIds()
        self.ids = ids.Ids()
        self.shmem_dev = shmem_dev
        self.page_stats = pages.Stats()
        self.build_ids: dict[tuple, Any] = {}
        self.ghosts: dict[tuple[int, int], int] = {}
        self.memfd_inodes: dict[tuple[int, int], int] = {}
        self.dumped_files_ids: set[int] = set()
        self.pages_id = 0
        self.seccomp = seccomp.Seccomp()
        self.cgroups = Cgroups(opts.manage_cgroups)
        self.pipe_data_done: set[tuple[str, int]] = set()
        self.pids: set[int] = set()  # every pid and tid of the dumped tree (ours, as spice reads them)
        #: our pid of a task -> the one the images hold (the tree's pid namespace's: dump/tree.py)
        self.vpid: Callable[[int], int] = lambda pid: pid
        self.ttys: Any = None  # the pty ends met (dump/tty.py), whose queued data is read last
        #: the dump run's id (inventory.img), which also names the nftables lock table
        self.run_id = inventory.new_run_id()
        self._tcp: TcpDump | None = None

    @property
    def tcp(self) -> TcpDump:
        """The network lock and the repaired sockets, made (and their modules imported) on first use."""
        if self._tcp is None:
            from .netlock import NetworkLock
            from .tcp import TcpDump

            self._tcp = TcpDump(NetworkLock(self.opts.network_lock, self.run_id))
        return self._tcp

    def release_tcp(self, unlock: bool) -> None:
        if self._tcp is not None:
            self._tcp.release(unlock)

    def next_pages_id(self) -> int:
        self.pages_id += 1
        return self.pages_id


def fault(step: str) -> None:
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    name, _, action = spec.partition(":")
    if name != step:
        return
    if action == "kill":
        os.kill(os.getpid(), SIGKILL)
    if action == "stall":
        log.info(f"fault injection: stalling at {step}")
        print(f"spice-dump-stalled {step}", flush=True)
        time.sleep(3600)
    raise SpiceError("dump", f"fault injected at step {step}")


# ------------------------------------------------------------------------------------------ one task


class _Clock:
    """Debug-log how long each phase of a task's dump took (what `spice dump -v4` profiles)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.t = time.perf_counter()

    def lap(self, what: str) -> None:
        now = time.perf_counter()
        log.debug(f"task {self.pid}: {what}: {(now - self.t) * 1e3:.2f} ms")
        self.t = now


class TaskInTask:
    __slots__ = ("threads", "mm", "untouched")

    def __init__(self, per_thread: dict[int, threads.ThreadInTask], mmit: mm.MmInTask, untouched: set[int]) -> None:
        self.threads, self.mm = per_thread, mmit
        #: stack pages below the threads' sp that held nothing before spice ran syscalls there
        self.untouched = untouched


def _in_task(t: tree.Task, core: Message, vpid: Callable[[int], int]) -> TaskInTask:
    """Everything only the task can tell, from syscalls injected into each of its threads (one
    batch per thread)."""
    per_thread: dict[int, threads.ThreadInTask] = {}
    mmit = mm.MmInTask()
    untouched: set[int] = set()
    maps = read_maps(t.pid)  # the threads share them
    for tid in t.tids:
        untouched |= pages.unpopulated_below_sp(t.pid, tid)
        with Remote(tid, scratch_size=SCRATCH_SIZE, maps=maps) as r:
            b = Batch(r)
            thread = threads.ask_in_task(b)
            if tid == t.pid:
                answers = (signals.ask_sigactions(b, core.tc), timers.ask(b, t.pid, core.tc, vpid),
                           creds.ask_task_in_task(b, core.tc))
                mm_answer = mm.ask_in_task(b)
            b.run()
            per_thread[tid] = thread()
            if tid == t.pid:
                for answer in answers:
                    answer()
                mmit = mm_answer()
            fault("in-task")
    return TaskInTask(per_thread, mmit, untouched)


def _leader_tc(t: tree.Task, core: Message) -> None:
    tc = core.tc
    st = t.stat
    tc.task_state = t.state
    tc.exit_code = 0
    tc.flags = st.flags
    tc.comm = st.comm
    tc.blk_sigset = pt.getsigmask(t.pid)
    if t.state == tree.TASK_STOPPED:
        tc.stop_signo = t.stop_signo
    creds.fill_task_knobs(t.pid, tc)
    signals.queue(t.pid, True, tc.signals_s)


def dump_task(ctx: DumpContext, t: tree.Task) -> None:
    pid = t.pid
    log.info(f"Dumping task (pid: {pid} comm: {t.stat.comm})")
    leader = codec.pb("core_entry", lite=True)(mtype=X86_64)
    leader.tc.SetInParent()
    clock = _Clock(pid)
    it = _in_task(t, leader, ctx.vpid)
    clock.lap("syscalls in the task")
    t.ids = ctx.ids.task_ids(pid)
    vpid = ctx.vpid(pid)  # the pid that names its images
    ctx.images.add(f"ids-{vpid}.img", "IDS", t.ids)
    vmas = mm.collect_vmas(ctx, pid)
    log.debug(f"task {pid}: {len(t.tids)} threads, {len(vmas)} VMAs")
    clock.lap("mappings and their files")
    fault("mappings")
    if t.ids.files_id not in ctx.dumped_files_ids:
        ctx.dumped_files_ids.add(t.ids.files_id)
        files.dump_fds(ctx, pid, t.ids.files_id)
    clock.lap("fds")
    fault("files")
    cores: dict[int, Message] = {}
    sps = []
    for tid in t.tids:
        core = leader if tid == pid else codec.pb("core_entry", lite=True)(mtype=X86_64)
        regs = threads.image_regs(pt.getregs(tid))
        sps.append(regs.sp)
        threads.fill_thread_info(core, tid, regs, it.threads[tid])
        threads.fill_thread_core(core, pid, tid, it.threads[tid], leader=tid == pid,
                                 cg_set=ctx.cgroups.thread_set(pid, tid))
        creds.fill_creds(core, proc.status(pid, tid), it.threads[tid].secbits)
        ctx.seccomp.fill(tid, core.thread_core)
        signals.queue(tid, False, core.thread_core.signals_p)
        cores[tid] = core
    _leader_tc(t, leader)
    clock.lap("registers and thread state")
    t0 = time.perf_counter()
    runs = pages.drop_scratch_pages(pid, pages.collect_runs(pid, vmas, sps, ctx.page_stats), it.untouched)
    ctx.page_stats.dump_s += time.perf_counter() - t0
    img = pages.PagesImage(ctx.images, f"pagemap-{vpid}.img", ctx.next_pages_id(), ctx.page_stats)
    try:
        pages.write_runs(pid, runs, img)
    finally:
        img.close()
    log.info(f"task {pid}: {img.pages} pages in {len(img.entries) - 1} runs -> pages-{img.pages_id}.img")
    clock.lap("memory")
    fault("pages")
    for tid in t.tids:
        ctx.images.add(f"core-{ctx.vpid(tid)}.img", "CORE", cores[tid])
    fault("cores")
    ctx.images.add(f"mm-{vpid}.img", "MM", mm.mm_entry(ctx, pid, t.stat, vmas, it.mm))
    files.dump_fs(ctx, pid, int(proc.status(pid)["Umask"], 8))


# ------------------------------------------------------------------------------------------ the dump


def _check_root(o: Options, root: tree.Task) -> None:
    if root.sid != root.pid and not o.shell_job:
        raise SpiceError("dump", f"The root process {root.pid} is not a session leader. "
                                 "Consider using --shell-job option")


def _release(ctx: DumpContext, frozen: seize.FrozenTree, o: Options) -> None:
    # like criu: only a tree left running gets its connections back (out of repair mode, unlocked);
    # killed or stopped, they stay silent and locked for the restore
    ctx.release_tcp(unlock=bool(o.leave_running))
    if ctx.ttys is not None and (o.leave_running or o.leave_stopped):
        ctx.ttys.write_back()
    if o.leave_running:
        frozen.unfreeze()
        log.info("Tree left running")
    elif o.leave_stopped:
        frozen.leave_stopped()
        log.info("Tree left stopped")
    else:
        frozen.kill()
        log.info("Tree killed")


def _collect(ctx: DumpContext, frozen: seize.FrozenTree) -> Message:
    o = ctx.opts
    tasks = tree.collect(frozen)
    ctx.vpid = tree.PidMap(tasks)
    _check_root(o, tasks[0])
    ctx.pids = {p for t in tasks for p in (t.pid, *t.tids)}
    ctx.seccomp.collect(tasks)
    fault("frozen")
    for t in tasks:
        if t.state == tree.TASK_DEAD:
            ctx.images.add(f"core-{ctx.vpid(t.pid)}.img", "CORE", tree.zombie_core(t))
        else:
            dump_task(ctx, t)
    if ctx.ttys is not None:
        from .tty import check_pairs

        check_pairs(ctx)
        ctx.ttys.dump_queued(ctx.images)
    ctx.images.add_all("pstree.img", "PSTREE", tree.pstree_entries(tasks, ctx.vpid))
    ctx.images.add("seccomp.img", "SECCOMP", ctx.seccomp.entry)
    nsdump.dump(ctx)
    if (own := ctx.ids.own_time_ns) is not None:  # a tree criu restored: its time namespace goes in the images
        ctx.images.add(f"timens-{own[0]}.img", "TIMENS", inventory.timens(own[1]))
    else:
        ctx.images.add("timens-0.img", "TIMENS", inventory.timens())
    if (cg := ctx.cgroups.entry()) is not None:
        ctx.images.add("cgroup.img", "CGROUP", cg)
    fault("images")
    return inventory.inventory(ctx.ids.root_ids, o.network_lock, ctx.run_id, tcp_close=bool(o.tcp_close))


def dump(o: Options) -> int:
    """The `spice dump` action; returns the exit code (SpiceError for user-facing failures)."""
    if o.tree is None:
        raise SpiceError("dump", "pid not specified (-t PID)")
    images = ImageSet(o.images_dir)
    ctx = DumpContext(o, images, shmem_dev=shmem.shmem_dev())
    images.begin()
    frozen: seize.FrozenTree | None = None
    t0 = time.perf_counter()
    try:
        o.run_script("pre-dump")
        frozen = seize.freeze(o.tree, float(o.timeout))
        t_frozen = time.perf_counter()
        log.info(f"Frozen {len(frozen.tids())} threads of {len(frozen.pids())} processes in "
                 f"{(t_frozen - t0) * 1e3:.1f} ms")
        if o.network_lock == "nftables":
            ctx.tcp.lock.begin()  # criu's "Lock network": right after the freeze (iptables: per connection)
        o.run_script("query-ext-files")
        inv = _collect(ctx, frozen)
        fault("commit")
        images.commit(inv)
        o.run_script("post-dump")  # the tree is still frozen: a client may still say no
    except BaseException as e:
        err = _as_spice_error(e)
        try:
            ctx.release_tcp(unlock=True)  # repair mode off, lock removed, before the tree runs on
        except Exception as ue:  # noqa: BLE001 - report the original failure
            log.error("dump", f"unlocking the network after the failure: {ue}")
        if ctx.ttys is not None:
            ctx.ttys.write_back()
            ctx.ttys.close()
        if frozen is not None:
            try:
                frozen.unfreeze()
            except Exception as ue:  # noqa: BLE001 - report the original failure
                log.error("dump", f"resuming the tree after the failure: {ue}")
        images.abort(err.message if err else type(e).__name__)
        if err is None:
            raise
        if err is not e:
            raise err from None
        raise
    _release(ctx, frozen, o)
    if ctx.ttys is not None:
        ctx.ttys.close()
    t_done = time.perf_counter()
    st = ctx.page_stats
    stats_img.write(
        o.work_dir or o.images_dir, "dump",
        freezing_time=int((t_frozen - t0) * 1e6), frozen_time=int((t_done - t_frozen) * 1e6),
        memdump_time=int(st.dump_s * 1e6), memwrite_time=int(st.write_s * 1e6),
        pages_scanned=st.scanned, pages_skipped_parent=0, pages_written=st.written, irmap_resolve=0,
        pages_lazy=0, shpages_scanned=st.sh_scanned, shpages_skipped_parent=0, shpages_written=st.sh_written,
    )
    log.info("Dumping finished successfully")
    if o.display_stats:
        path = os.path.join(o.work_dir or o.images_dir, "stats-dump")
        print(stats_img.display("dump", stats_img.read(path)), end="")
    return 0


def _as_spice_error(e: BaseException) -> SpiceError | None:
    """The user-facing form of a failure (None for KeyboardInterrupt/SystemExit)."""
    if isinstance(e, SpiceError):
        return e
    if isinstance(e, TaskGone):
        return SpiceError("dump", f"{e.strerror or e} (the task died while being dumped)")
    if isinstance(e, ProcessLookupError):
        return SpiceError("dump", f"a task of the tree exited while being dumped ({e})")
    if isinstance(e, Exception):
        import traceback

        log.debug(traceback.format_exc())
        return SpiceError("dump", f"{type(e).__name__}: {e}")
    return None
