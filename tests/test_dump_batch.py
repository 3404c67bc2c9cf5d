# SPDX-License-Identifier: MIT
"""Remote.queries(): the dump's read-only syscalls run in one resumption of the task (a loop in our
trampoline, ended by a self-signal the thread ignores). Results must equal one-by-one injection,
and the task must continue exactly as after a plain seize+detach, also when the tracer "dies"
(detaches) before, during or after the batch, or a real signal arrives meanwhile."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import threading
import time

from progs import Target, seize_stopped, state
from test_inject import (
    blocked_target,
    disassemble,
    done,
    in_parallel,
    memory_digest,
    orphaned,
    resumed_in_time,
    status_tracer,
)

from spice_criu import inject
from spice_criu.dump.signals import SIGACTION_SIGNALS
from spice_criu.inject import Remote
from spice_criu.linux import ptrace as pt
from spice_criu.linux.syscalls import NR

SIGURG, SIGWINCH, SIGCHLD = 23, 28, 17


def sigaction_calls(base: int) -> list[tuple[int, ...]]:
    return [(NR.rt_sigaction, s, 0, base + i * 32, 8) for i, s in enumerate(SIGACTION_SIGNALS)]


def test_batch_results_equal_one_by_one_and_task_continues():
    with blocked_target("sleep", 700) as t:
        time.sleep(0.1)
        seize_stopped(t.pid)
        regs = pt.getregs(t.pid)
        digest0 = memory_digest(t.pid)
        with Remote(t.pid) as r:
            one = [r.syscall(*c) for c in sigaction_calls(r.scratch)]
            raw_one = r.read(r.scratch, 32 * len(SIGACTION_SIGNALS))
            calls = [*sigaction_calls(r.scratch + 2048), (NR.getpid,), (NR.rt_sigaction, 9, 1, 0, 8), (NR.gettid,)]
            assert r._batch_signal() == SIGURG
            got = r.queries(calls)
            assert got[: len(one)] == one
            assert got[len(one):] == [t.pid, -14, t.pid]  # EFAULT comes back as -errno
            assert r.read(r.scratch + 2048, len(raw_one)) == raw_one
            # the SIGUSR1 handler the blocker installed is among them
            assert raw_one != bytes(len(raw_one))
            assert r.check(NR.getpid) == t.pid  # injection goes on from the batch's stop
            assert r.queries([(NR.getppid,)]) == [r.check(NR.getppid)]
        assert pt.getregs(t.pid) == regs
        assert memory_digest(t.pid) == digest0
        pt.detach(t.pid)
        t.detached_after = (time.monotonic() - t.started) * 1000
        res = done(t)
        assert res["ret"] == "0" and res["bad"] == "0" and resumed_in_time(res, 700, t), res


def test_batch_signal_avoids_handled_blocked_and_pending_signals():
    with blocked_target("sleep", 2000) as t:
        time.sleep(0.05)
        seize_stopped(t.pid)
        with Remote(t.pid) as r:
            # the blocker handles none of them and blocks nothing: the first choice
            assert r._batch_signal() == SIGURG
            # block SIGURG, handle SIGWINCH (in the task itself): SIGCHLD remains
            r.check(NR.rt_sigprocmask, 0, r.put((1 << (SIGURG - 1)).to_bytes(8, "little")), 0, 8)
            act = r.put(int(r.mapping[0]).to_bytes(8, "little") + bytes(24), 64)
            r.check(NR.rt_sigaction, SIGWINCH, act, 0, 8)
            assert r._batch_signal() == SIGCHLD
            assert r.queries([(NR.getpid,)]) == [t.pid]
            r.check(NR.rt_sigaction, SIGCHLD, act, 0, 8)
            assert r._batch_signal() == 0
            # no usable signal: one injection per call, same results
            assert r.queries([(NR.getpid,), (NR.gettid,)]) == [t.pid, t.pid]
        os.kill(t.pid, signal.SIGKILL)


def test_signal_arriving_before_batch_is_delivered_once():
    """SIGUSR1 (handler, no SA_RESTART) pending when the batch starts: delivered to the task's
    own context, the batch runs again from there; pause() then returns EINTR after detach."""
    with blocked_target("pause", 0) as t:
        time.sleep(0.05)
        seize_stopped(t.pid)
        with Remote(t.pid) as r:
            os.kill(t.pid, signal.SIGUSR1)
            before = r.regs.ip
            assert r.queries([(NR.getpid,), (NR.gettid,)]) == [t.pid, t.pid]
            assert r.regs.ip != before  # the handler frame was set up
        pt.detach(t.pid)
        res = done(t)
        assert res["ret"] == "-4" and res["bad"] == "0"


def _orphan_in_batch(pid: int, when: str) -> None:
    """Leave the task as a dying tracer would: registers set for the batch but not yet resumed
    ("before"), or stopped at the batch's own signal ("after"); then the kernel's detach."""
    r = Remote(pid)
    if when == "after":
        assert r.queries([(NR.getpid,)] * 3) == [pid] * 3
    else:
        sig = r._batch_signal()
        assert sig
        table = r.scratch + r.scratch_size // 2
        entries = [(NR.getpid, 0, 0, 0, 0, 0, 0, 0)] * 3 + [(NR.tgkill, pid, pid, sig, 0, 0, 0, 0)]
        r.write(table, b"".join(inject._ENTRY.pack(*e) for e in entries))
        regs = r._inj
        regs.ip, regs.sp, regs.orig_ax = r.mapping[0] + inject.BATCH_OFFSET, r._sp, inject._U64
        regs.bx, regs.r12 = table, len(entries)
        pt.setregs(pid, regs)
    pt.detach(pid)


def test_orphaned_batch_returns_to_its_context():
    def case(c: tuple[str, str]) -> None:
        mode, when = c
        res, t, what = orphaned(mode, lambda pid: _orphan_in_batch(pid, when), when)
        if mode != "read":
            assert res["ret"] == "0" and resumed_in_time(res, 1000, t), what

    in_parallel(case, [(m, w) for m in ("sleep", "read", "absclock") for w in ("before", "after")])


def _batch_tracer(pid: int, seed: int, ready: int) -> None:
    rnd = random.Random(seed)
    seize_stopped(pid)
    os.write(ready, b"s")
    while True:
        with Remote(pid) as r:
            for _ in range(rnd.choice((0, 1, 5, 30))):
                n = rnd.choice((1, 10, 62))
                assert r.queries([(NR.getpid,)] * n) == [pid] * n


def test_tracer_sigkilled_mid_batch_leaves_target_running_correctly():
    """SIGKILL a tracer running endless batches at random points: the self-checking target keeps
    running with intact registers and memory, no nanosleep sees EINTR, no signal reaches it."""
    rnd = random.Random(4321)
    with Target.prog("spin", "300") as t:
        t.wait_for(r"^n=\d+")
        for i in range(30):
            rfd, wfd = os.pipe()
            tracer = os.fork()
            if tracer == 0:
                try:
                    os.close(rfd)
                    _batch_tracer(t.pid, i, wfd)
                finally:
                    os._exit(1)
            os.close(wfd)
            assert os.read(rfd, 1) == b"s"
            os.close(rfd)
            time.sleep(rnd.uniform(0, 0.02))
            os.kill(tracer, signal.SIGKILL)
            os.waitpid(tracer, 0)
            assert status_tracer(t.pid) == 0
            assert "BAD" not in t.output() and state(t.pid) in "SR", t.output()[-500:]
        n = len(t.lines())
        t.wait_for(r"^n=\d+", timeout=5, count=n + 2)
        last = t.lines()[-1]
        assert re.match(r"n=\d+ sum=\d+ bad=0 eintr=0$", last), last


def test_batch_code_encoding():
    """The loop: 7 loads from [rbx], syscall, store rax, next entry, dec r12, jnz, jmp fallback."""
    code, stop = inject.batch_code(0x10200, 0x10002)
    ins = disassemble(code, 0x10200)
    loads = [re.sub(r"\s+", " ", i) for i in ins[:7]]
    assert loads == ["mov (%rbx),%rax", "mov 0x8(%rbx),%rdi", "mov 0x10(%rbx),%rsi", "mov 0x18(%rbx),%rdx",
                     "mov 0x20(%rbx),%r10", "mov 0x28(%rbx),%r8", "mov 0x30(%rbx),%r9"]
    assert ins[7] == "syscall" and code[stop - 2 : stop] == b"\x0f\x05"
    assert re.sub(r"\s+", " ", ins[8]) == "mov %rax,0x38(%rbx)"
    assert re.sub(r"\s+", " ", ins[9]) == "add $0x40,%rbx"
    assert re.sub(r"\s+", " ", ins[10]) == "dec %r12"
    assert ins[11].startswith("jne") and "10200" in ins[11]
    assert ins[12].startswith("jmp") and "10002" in ins[12]
    assert len(ins) == 13


def test_batch_in_a_task_that_is_init_of_its_own_pid_namespace():
    """The batch's closing tgkill runs inside the task: it must name the task by the numbers of the
    task's own pid namespace (there it is pid 1; the host's pid names nothing). Was a hang (runc
    containers); a watchdog kills the target so that a regression fails instead of hanging."""
    un = subprocess.Popen(["unshare", "--pid", "--fork", "--kill-child", "sleep", "100"],
                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        pid = 0
        while not pid and time.monotonic() < deadline:
            try:
                with open(f"/proc/{un.pid}/task/{un.pid}/children") as f:
                    pid = int(f.read().split()[0])
                with open(f"/proc/{pid}/comm") as f:
                    pid = pid if f.read().strip() == "sleep" else 0
            except (OSError, IndexError, ValueError):
                time.sleep(0.01)
        assert pid, "no sleep in its own pid namespace"
        with open(f"/proc/{pid}/status") as f:
            assert re.search(rf"^NSpid:\s+{pid}\s+1$", f.read(), re.M)  # pid 1 in there
        seize_stopped(pid)
        watchdog = threading.Timer(10, os.kill, (pid, signal.SIGKILL))
        watchdog.start()
        try:
            with Remote(pid) as r:
                assert r._batch_signal() == SIGURG
                assert r.queries([(NR.getpid,), (NR.gettid,), (NR.getppid,)]) == [1, 1, 0]
        finally:
            watchdog.cancel()
        pt.detach(pid)
        assert state(pid) in "SR"
    finally:
        un.kill()
        un.wait()
