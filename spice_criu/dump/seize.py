# SPDX-License-Identifier: MIT
"""Freeze a process tree for checkpointing, and let it go again.

freeze() PTRACE_SEIZEs every thread of every process under a root pid, PTRACE_INTERRUPTs it and waits
for the stop, re-listing threads (/proc/PID/task) and children (/proc/PID/task/TID/children) until a
pass finds nothing new: once every known task is stopped nothing can clone any more, so the loop ends.
Tasks found group-stopped (SIGSTOP & co) are recorded so they stay stopped; zombies cannot be seized
and are reported. Signals that arrive during the freeze are delivered (handler frames set up), as the
kernel would have, before the task stops.

The frozen tree is released with unfreeze() (detach: everything continues exactly as it was,
syscalls restart), leave_stopped() (criu --leave-stopped) or kill() (criu's default after a dump).
PTRACE_O_EXITKILL is not used: if spice dies, the kernel detaches and the tree keeps running.
"""

from __future__ import annotations

import _signal as signal  # the signal module's enums cost ~5 ms of start-up; ints do here
import errno
import os
import time

from ..errors import SpiceError
from ..linux import ptrace as pt
from ..record import Factory, Record

DEFAULT_TIMEOUT = 10.0  # criu --timeout default
SEIZE_OPTIONS = pt.O_TRACESYSGOOD  # inject.Remote needs TRACESYSGOOD


class Task(Record):
    """A seized thread."""

    tid: int
    pid: int
    stopped: bool = False  # was in group-stop when frozen (stays stopped after unfreeze)
    stop_sig: int = 0


class Process(Record):
    pid: int
    ppid: int
    threads: list[int] = Factory(list)  # seized tids, leader first when alive
    children: list[int] = Factory(list)
    zombie: bool = False  # could not be seized: already dead, waiting for its parent
    exit_code: int = 0  # wait status of a zombie (from /proc/PID/stat)
    dead_leader: bool = False  # the leader exited but other threads live on


def _stat(pid: int, tid: int | None = None) -> list[str] | None:
    """Fields of /proc/PID[/task/TID]/stat after the comm, so fields[0] is the state (field 3)."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    try:
        with open(path) as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return data.rsplit(")", 1)[1].split()


def _state(pid: int, tid: int | None = None) -> str:
    st = _stat(pid, tid)
    return st[0] if st else "X"


def _status_field(pid: int, name: str) -> str | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(name + ":"):
                    return line.split(":", 1)[1].strip()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def _tids(pid: int) -> list[int]:
    try:
        tids = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
    except (FileNotFoundError, ProcessLookupError):
        return []
    if pid in tids:
        tids.remove(pid)
        tids.insert(0, pid)
    return tids


def _children(pid: int, tids: list[int]) -> list[int]:
    out: list[int] = []
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out.extend(int(c) for c in f.read().split())
        except (FileNotFoundError, ProcessLookupError):
            continue
    return out


class FrozenTree:
    """Seized, stopped tasks of a process tree, parents before children in `processes`."""

    def __init__(self, root: int, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.root = root
        self.timeout = timeout
        self.processes: dict[int, Process] = {}
        self.tasks: dict[int, Task] = {}
        self.released = False

    # -- queries ----------------------------------------------------------------------------------------

    def pids(self) -> list[int]:
        return list(self.processes)

    def tids(self) -> list[int]:
        return list(self.tasks)

    def zombies(self) -> list[int]:
        return [p.pid for p in self.processes.values() if p.zombie]

    def stopped(self, pid: int) -> bool:
        """The process was group-stopped (SIGSTOP...) when frozen: CRIU's TASK_STOPPED."""
        p = self.processes[pid]
        return bool(p.threads) and all(self.tasks[t].stopped for t in p.threads)

    # -- release ----------------------------------------------------------------------------------------

    def unfreeze(self) -> None:
        """Detach everything: tasks continue exactly as they were (group-stopped ones stay stopped)."""
        if self.released:
            return
        stopped = [pid for pid in self.processes if self.stopped(pid)]
        self._detach_all()
        self._wait_group_stops(stopped)

    def leave_stopped(self) -> None:
        """Detach leaving every process stopped (SIGSTOP), like criu --leave-stopped."""
        if self.released:
            return
        for p in self.processes.values():
            if p.threads and not self.stopped(p.pid):
                try:
                    os.kill(p.pid, signal.SIGSTOP)
                except ProcessLookupError:
                    pass
        self._detach_all()
        self._wait_group_stops([p.pid for p in self.processes.values() if p.threads])

    def kill(self, timeout: float = 10.0) -> None:
        """SIGKILL the whole tree (criu's default after a successful dump) and wait for it to die.

        Exit notifications of tasks that are not our children are consumed, which hands the zombies
        to their real parents; our own children are left for us to reap (waitid WNOWAIT).
        """
        if self.released:
            return
        self.released = True
        for p in self.processes.values():
            if p.threads:
                try:
                    os.kill(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        me = os.getpid()
        deadline = time.monotonic() + timeout
        pending = dict(self.tasks)
        delay = 1e-4
        while pending:
            for tid, task in list(pending.items()):
                if tid == task.pid and self.processes[task.pid].ppid == me:
                    res = _waitid_nowait(tid)
                    if res is None:
                        continue
                    if res:
                        pending.pop(tid)
                        continue
                try:
                    p, _ = os.waitpid(tid, pt.WALL | os.WNOHANG)
                except ChildProcessError:
                    pending.pop(tid)
                    continue
                if p:
                    pending.pop(tid)
            if pending:
                if time.monotonic() > deadline:
                    raise SpiceError("dump", f"Timed out waiting for killed pid {next(iter(pending))} to die")
                time.sleep(delay)
                delay = min(delay * 2, 0.01)

    def release(self, mode: str = "resume") -> None:
        """mode: "resume" (unfreeze), "stop" (leave stopped) or "kill"."""
        {"resume": self.unfreeze, "stop": self.leave_stopped, "kill": self.kill}[mode]()

    def _detach_all(self) -> None:
        if self.released:
            return
        self.released = True
        for tid in self.tasks:
            try:
                pt.detach(tid, 0)
            except OSError as e:
                if e.errno != errno.ESRCH:
                    raise
                # not in a ptrace stop (or gone): stop it first, then detach
                _detach_running(tid)

    def _wait_group_stops(self, pids: list[int], timeout: float = 2.0) -> None:
        """A group-stopped task leaves its ptrace stop on detach and re-enters the group stop on
        its own, a moment later; wait for that, so whoever checks after us sees it stopped (T)."""
        pending = [tid for pid in pids for tid in self.processes[pid].threads]
        deadline = time.monotonic() + timeout
        delay = 1e-4
        while pending:
            pending = [tid for tid in pending if _state(self.tasks[tid].pid, tid) not in "TXZ"]
            if not pending or time.monotonic() > deadline:
                return
            time.sleep(delay)
            delay = min(delay * 2, 0.01)

    def __enter__(self) -> FrozenTree:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.released:
            self.unfreeze()

    # -- freezing ---------------------------------------------------------------------------------------

    def _forget(self, tid: int) -> None:
        task = self.tasks.pop(tid, None)
        if task is not None and task.pid in self.processes:
            threads = self.processes[task.pid].threads
            if tid in threads:
                threads.remove(tid)

    def _seize(self, pid: int, tid: int, options: int) -> bool:
        try:
            pt.seize(tid, options)
        except OSError as e:
            if e.errno == errno.ESRCH or _state(pid, tid) in "XZ":
                return False  # exited meanwhile
            tracer = _status_field(tid, "TracerPid")
            extra = f" (traced by {tracer})" if tracer not in (None, "0") else ""
            raise SpiceError("dump", f"Can't seize pid {tid}: {os.strerror(e.errno)}{extra}") from None
        self.tasks[tid] = Task(tid, pid)
        self.processes[pid].threads.append(tid)
        try:
            pt.interrupt(tid)
        except ProcessLookupError:
            pass
        return True

    def _wait_stops(self, pending: set[int], deadline: float) -> None:
        """Wait for the PTRACE_EVENT_STOPs of `pending`. Between WNOHANG polls we sleep in
        sigtimedwait(SIGCHLD): the kernel sends the tracer SIGCHLD on every tracee stop."""
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
        try:
            self._poll_stops(pending, deadline)
        finally:
            if signal.SIGCHLD not in old:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})

    def _poll_stops(self, pending: set[int], deadline: float) -> None:
        while pending:
            progressed = False
            for tid in list(pending):
                try:
                    p, status = os.waitpid(tid, pt.WALL | os.WNOHANG)
                except ChildProcessError:
                    pending.discard(tid)
                    self._forget(tid)
                    continue
                if not p:
                    continue
                progressed = True
                ws = pt.WaitStatus(p, status)
                if ws.gone:
                    pending.discard(tid)
                    self._forget(tid)
                elif ws.event == pt.EVENT_STOP:
                    pending.discard(tid)
                    task = self.tasks[tid]
                    task.stopped = ws.group_stop
                    task.stop_sig = ws.stopsig if ws.group_stop else 0
                else:
                    # a signal-delivery-stop: let the kernel deliver it, the interrupt stops it next
                    pt.cont(tid, ws.stopsig if ws.signal_stop else 0)
            if not pending:
                return
            if time.monotonic() > deadline:
                tid = min(pending)
                raise SpiceError("dump", f"Timed out after {self.timeout:g}s freezing pid {tid} "
                                         f"(state {_state(self.tasks[tid].pid, tid)})")
            if not progressed:
                # bounded: another thread of ours may take the (process-directed) SIGCHLD
                signal.sigtimedwait({signal.SIGCHLD}, min(2e-3, max(deadline - time.monotonic(), 1e-4)))

    def _freeze(self) -> None:
        deadline = time.monotonic() + self.timeout
        me = os.getpid()
        while True:
            changed = False
            pending: set[int] = set()
            for pid, proc in list(self.processes.items()):
                if proc.zombie:
                    continue
                tids = _tids(pid)
                if me in tids:
                    raise SpiceError("dump", f"spice itself (pid {me}) is inside the tree of pid {self.root}")
                live = [t for t in tids if _state(pid, t) not in "XZ"]
                if not live:
                    st = _stat(pid)
                    if st and st[0] == "Z":
                        proc.zombie = True
                        proc.exit_code = int(st[49]) if len(st) > 49 else 0
                        continue
                    if pid == self.root:
                        raise SpiceError("dump", f"No process with pid {pid}")
                    del self.processes[pid]
                    continue
                proc.dead_leader = pid not in live
                new = [t for t in live if t not in self.tasks]
                options = SEIZE_OPTIONS
                if new and _status_field(pid, "Seccomp") == "2":
                    options |= pt.O_SUSPEND_SECCOMP  # our injected syscalls must not meet the filter
                for tid in new:
                    if self._seize(pid, tid, options):
                        pending.add(tid)
                    changed = True  # seized, or exiting under our hands: look again
            self._wait_stops(pending, deadline)
            if changed and time.monotonic() > deadline:
                raise SpiceError("dump", f"Timed out after {self.timeout:g}s freezing the tree of pid {self.root}")
            for pid, proc in list(self.processes.items()):
                if proc.zombie:
                    continue
                kids = _children(pid, _tids(pid))
                proc.children = kids
                for kid in kids:
                    if kid not in self.processes:
                        self.processes[kid] = Process(kid, pid)
                        changed = True
            if not changed:
                return


def _waitid_nowait(pid: int) -> bool | None:
    """Has our child `pid` exited (left waitable)? None when it has not yet."""
    try:
        res = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT | os.WNOHANG | pt.WALL)
    except ChildProcessError:
        return True
    if res is None:
        return None
    return True


def _detach_running(tid: int) -> None:
    try:
        pt.interrupt(tid)
        while True:
            ws = pt.waitpid(tid)
            if ws.gone:
                return
            if ws.event == pt.EVENT_STOP:
                break
            pt.cont(tid, ws.stopsig if ws.signal_stop else 0)
        pt.detach(tid, 0)
    except (ChildProcessError, ProcessLookupError):
        pass


def freeze(root: int, timeout: float = DEFAULT_TIMEOUT) -> FrozenTree:
    """Seize and stop every task of the tree rooted at `root` (SpiceError on failure, with
    everything seized so far released as it was)."""
    if root == os.getpid():
        raise SpiceError("dump", f"Can't dump spice itself (pid {root})")
    st = _stat(root)
    if st is None or st[0] == "X":
        raise SpiceError("dump", f"No process with pid {root}")
    tgid = _status_field(root, "Tgid")
    if tgid is not None and int(tgid) != root:
        raise SpiceError("dump", f"pid {root} is a thread of process {tgid}, not a process")
    tree = FrozenTree(root, timeout)
    tree.processes[root] = Process(root, int(st[1]))
    try:
        tree._freeze()
    except BaseException:
        tree.unfreeze()
        raise
    if tree.processes[root].zombie:
        tree.unfreeze()
        raise SpiceError("dump", f"pid {root} is a zombie")
    return tree
