# SPDX-License-Identifier: MIT
"""dump.seize: freezing real process trees (threads, children, races with clone/fork, stopped tasks,
zombies) and the three ways out (unfreeze, leave stopped, kill)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from progs import Target, state, status_field, wait_state

from spice_criu.dump.seize import freeze
from spice_criu.errors import SpiceError
from spice_criu.inject import Remote
from spice_criu.linux.syscalls import NR


def tracer_of(pid: int) -> int:
    return int(status_field(pid, "TracerPid"))


def all_ppids() -> dict[int, int]:
    """pid -> ppid of every process on the system."""
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    out[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (FileNotFoundError, ProcessLookupError):
                pass
    return out


def assert_complete(tree) -> None:
    """Every thread of every process of the tree is seized and stopped; every descendant is in it."""
    me = os.getpid()
    for pid, proc in tree.processes.items():
        if proc.zombie:
            assert state(pid) == "Z"
            continue
        tids = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
        assert sorted(proc.threads) == tids, (pid, proc.threads, tids)
        for tid in tids:
            assert int(status_field(tid, "TracerPid")) == me
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                assert f.read().rsplit(")", 1)[1].split()[0] in "tT", tid
    ppids = all_ppids()
    for pid, ppid in ppids.items():
        if ppid in tree.processes and pid in ppids:
            assert pid in tree.processes, f"child {pid} of {ppid} escaped the freeze"
            assert pid in tree.processes[ppid].children


def unused_pid() -> int:
    pid = 4_000_000
    while os.path.exists(f"/proc/{pid}"):
        pid += 1
    return pid


def test_errors_name_the_pid():
    pid = unused_pid()
    with pytest.raises(SpiceError) as e:
        freeze(pid)
    assert e.value.where == "dump" and str(e.value) == f"No process with pid {pid}"
    assert e.value.criu_line() == f"Error (spice/dump): No process with pid {pid}"
    with pytest.raises(SpiceError, match="itself"):
        freeze(os.getpid())
    with Target.prog("threads", "2") as t:
        t.wait_for("ready")
        tid = max(int(x) for x in os.listdir(f"/proc/{t.pid}/task"))
        with pytest.raises(SpiceError, match=f"pid {tid} is a thread of process {t.pid}"):
            freeze(tid)


def test_freeze_and_unfreeze_single_process_exactly():
    with Target.prog("blocker", "sleep", "500") as t:
        t.wait_for("ready")
        time.sleep(0.1)
        tree = freeze(t.pid)
        assert tree.pids() == [t.pid] and tree.tids() == [t.pid]
        assert not tree.stopped(t.pid)
        assert_complete(tree)
        with Remote(t.pid) as r:  # what dump does next
            assert r.check(NR.getpid) == t.pid
        tree.unfreeze()
        released = (time.monotonic() - t.started) * 1000
        assert tracer_of(t.pid) == 0
        m = t.wait_for(r"^done ret=(\S+) bad=(\S+) ms=(\S+)")
        # the sleep resumed with its remaining time (a restart from scratch would end >= 600)
        assert m.group(1) == "0" and m.group(2) == "0" and 490 <= float(m.group(3)) < max(500, released) + 90


def test_freeze_multithreaded_process():
    with Target.prog("threads", "4") as t:
        t.wait_for("tick", count=2)
        with freeze(t.pid) as tree:
            assert len(tree.processes[t.pid].threads) == 5
            assert tree.processes[t.pid].threads[0] == t.pid
            assert_complete(tree)
            n = len(t.lines())
            time.sleep(0.1)
            assert len(t.lines()) == n  # nothing runs while frozen
        assert all(tracer_of(tid) == 0 for tid in tree.tids())
        t.wait_for("tick", count=n + 2)


def test_freeze_three_process_tree():
    with Target.prog("tree") as t:
        for role in ("parent", "child", "grandchild"):
            t.wait_for(f"^{role} ")
        tree = freeze(t.pid)
        pids = tree.pids()
        assert len(pids) == 3 and pids[0] == t.pid
        child, grandchild = pids[1], pids[2]
        assert tree.processes[child].ppid == t.pid and tree.processes[t.pid].children == [child]
        assert tree.processes[grandchild].ppid == child and tree.processes[child].children == [grandchild]
        assert tree.processes[grandchild].children == []
        assert_complete(tree)
        tree.unfreeze()
        n = len(t.lines())
        for role in ("parent", "child", "grandchild"):
            t.wait_for(f"^{role} ", count=sum(1 for ln in t.lines()[:n] if ln.startswith(role + " ")) + 2)


@pytest.mark.parametrize("prog", [("threads", "2", "churn"), ("tree", "churn")], ids=["threads", "forks"])
def test_freeze_races_with_clone_and_fork(prog):
    """Threads and children are created continuously: every freeze must catch all of them."""
    with Target.prog(*prog) as t:
        t.wait_for("ready" if prog[0] == "threads" else "^grandchild ")
        for _ in range(10):
            tree = freeze(t.pid)
            try:
                assert_complete(tree)
                snapshot = {p: sorted(os.listdir(f"/proc/{p}/task")) for p in tree.pids()
                            if not tree.processes[p].zombie}
                time.sleep(0.01)
                assert snapshot == {p: sorted(os.listdir(f"/proc/{p}/task")) for p in snapshot}
            finally:
                tree.unfreeze()
            time.sleep(0.005)
        assert state(t.pid) in "SR"
        n = len(t.lines())
        t.wait_for("." if prog[0] == "tree" else "tick", count=n + 2)


def test_stopped_process_stays_stopped():
    with Target.prog("blocker", "sleep", "300") as t:
        t.wait_for("ready")
        os.kill(t.pid, signal.SIGSTOP)
        wait_state(t.pid, "T")
        tree = freeze(t.pid)
        assert tree.stopped(t.pid) and tree.tasks[t.pid].stop_sig == signal.SIGSTOP
        tree.unfreeze()
        assert tracer_of(t.pid) == 0
        time.sleep(0.05)
        assert state(t.pid) == "T"
        time.sleep(0.35)
        assert len(t.lines()) == 1
        os.kill(t.pid, signal.SIGCONT)
        m = t.wait_for(r"^done ret=(\S+) bad=(\S+)")
        assert m.groups() == ("0", "0")


def test_stopped_process_is_stopped_again_when_unfreeze_returns():
    """A detached group-stopped task re-enters its stop by itself, a moment after the detach;
    unfreeze() waits for that, so a check right after a dump sees T (without the wait, about one
    round in ten saw it running here)."""
    with Target.prog("threads", "2") as t:
        t.wait_for("tick")
        os.kill(t.pid, signal.SIGSTOP)
        wait_state(t.pid, "T")
        tids = [int(x) for x in os.listdir(f"/proc/{t.pid}/task")]
        for _ in range(150):
            freeze(t.pid).unfreeze()
            states = {tid: state(tid) for tid in tids}
            assert set(states.values()) == {"T"}, states
        os.kill(t.pid, signal.SIGCONT)
        n = len(t.lines())
        t.wait_for("tick", count=n + 2)


ZOMBIE_PARENT = """
import os, sys, time
c = os.fork()
if c == 0:
    os._exit(7)
print(c, flush=True)
time.sleep(30)
"""


def test_zombie_child_is_reported():
    with Target.python(ZOMBIE_PARENT) as t:
        child = int(t.wait_for(r"^(\d+)").group(1))
        wait_state(child, "Z")
        with freeze(t.pid) as tree:
            assert tree.zombies() == [child]
            assert tree.processes[child].exit_code == 7 << 8
            assert tree.processes[child].ppid == t.pid and tree.processes[t.pid].children == [child]
            assert tree.tids() == [t.pid]
        assert state(child) == "Z" and tracer_of(t.pid) == 0


def test_leave_stopped_then_continue():
    with Target.prog("tree") as t:
        t.wait_for("^grandchild ")
        tree = freeze(t.pid)
        pids = tree.pids()
        tree.leave_stopped()
        for pid in pids:
            wait_state(pid, "T")
            assert tracer_of(pid) == 0
        n = len(t.lines())
        time.sleep(0.05)
        assert len(t.lines()) == n
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
        t.wait_for("^grandchild ", count=sum(1 for ln in t.lines() if ln.startswith("grandchild ")) + 2)
        assert all(state(p) in "SR" for p in pids)


def test_kill_after_dump():
    with Target.prog("tree") as t:
        t.wait_for("^grandchild ")
        tree = freeze(t.pid)
        pids = tree.pids()
        tree.kill()
        assert t.wait(5) == -signal.SIGKILL
        for pid in pids[1:]:
            wait_state(pid, "XZ")  # gone, or a zombie about to be reaped by init


def test_timeout_releases_everything():
    """A vfork parent cannot stop until its child execs or exits: the freeze times out, naming it,
    and whatever was seized is released running."""
    with Target.prog("blocker", "vfork", "800") as t:
        t.wait_for("ready")
        time.sleep(0.05)
        start = time.monotonic()
        with pytest.raises(SpiceError) as e:
            freeze(t.pid, timeout=0.2)
        assert time.monotonic() - start < 1.0
        assert f"pid {t.pid}" in str(e.value) and "Timed out" in str(e.value) and e.value.where == "dump"
        assert tracer_of(t.pid) == 0
        assert all(tracer_of(p) == 0 for p, pp in all_ppids().items() if pp == t.pid)
        m = t.wait_for(r"^done ret=(\S+)", timeout=3)
        assert m.group(1) == "0"


SPICE_INSIDE = """
import os, sys, time
from spice_criu.dump.seize import freeze
from spice_criu.errors import SpiceError
try:
    freeze(os.getppid())
except SpiceError as e:
    print("ERR", e)
"""


def test_spice_inside_its_own_tree_is_refused():
    parent = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {SPICE_INSIDE!r}])"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", parent], capture_output=True, text=True, timeout=20,
                         cwd=root, env={**os.environ, "PYTHONPATH": root}).stdout
    assert "ERR spice itself (pid" in out and "is inside the tree" in out


def test_inject_into_every_thread_and_into_a_stopped_process():
    """What dump does after freezing: a Remote per thread (each its own tid and stack), including
    a process that was group-stopped and must stay stopped."""
    with Target.prog("threads", "3") as t, Target.prog("blocker", "sleep", "300") as s:
        t.wait_for("tick")
        s.wait_for("ready")
        os.kill(s.pid, signal.SIGSTOP)
        wait_state(s.pid, "T")
        with freeze(t.pid) as tree:
            for tid in tree.tids():
                with Remote(tid) as r:
                    assert r.check(NR.gettid) == tid and r.check(NR.getpid) == t.pid
        n = len(t.lines())
        t.wait_for("tick", count=n + 2)
        with freeze(s.pid) as tree:
            assert tree.stopped(s.pid)
            with Remote(s.pid) as r:
                assert r.check(NR.getpid) == s.pid
        time.sleep(0.05)
        assert state(s.pid) == "T" and len(s.lines()) == 1
        os.kill(s.pid, signal.SIGCONT)
        assert s.wait_for(r"^done ret=(\S+) bad=(\S+)").groups() == ("0", "0")
