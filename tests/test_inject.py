# SPDX-License-Identifier: MIT
"""inject.Remote on real processes: syscalls run inside the task, and the task continues exactly as
it would have (its own syscall restarts, registers and memory verified by the target itself)."""

from __future__ import annotations

import ctypes
import hashlib
import os
import random
import re
import signal
import subprocess
import threading
import time

import pytest
from progs import Target, maps_text, seize_stopped, state, wait_state

from spice_criu import inject
from spice_criu.inject import Remote, TaskGone, find_sites, read_maps, trampoline_code
from spice_criu.linux import prctl, procvm
from spice_criu.linux import ptrace as pt
from spice_criu.linux.mman import MAP_ANONYMOUS, MAP_PRIVATE, PAGE_SIZE, PROT_READ, PROT_WRITE
from spice_criu.linux.rseq import RSEQ_CS_OFFSET, RseqCs
from spice_criu.linux.syscalls import NR, signed64


def memory_digest(pid: int, skip: tuple[int, int] | None = None) -> dict[str, str]:
    """sha256 of every readable private mapping (minus the rseq area the kernel itself updates)."""
    conf = pt.get_rseq_configuration(pid)
    out = {}
    for m in read_maps(pid):
        if "r" not in m.perms or m.path in ("[vvar]", "[vvar_vclock]", "[vsyscall]") or m.perms[3] == "s":
            continue
        try:
            data = bytearray(procvm.read_any(pid, m.start, m.end - m.start))
        except OSError:
            continue
        if conf and conf.rseq_abi_pointer and m.start <= conf.rseq_abi_pointer < m.end:
            off = conf.rseq_abi_pointer - m.start
            data[off : off + 32] = bytes(32)
        out[f"{m.start:x}-{m.end:x} {m.perms} {m.path}"] = hashlib.sha256(data).hexdigest()
    return out


def blocked_target(mode: str, ms: int, stdin: int | None = None) -> Target:
    """blocker MODE MS; its stdin is `stdin`, or a pipe nobody writes to."""
    keep = None
    if stdin is None:
        stdin, keep = os.pipe()
    t = Target.prog("blocker", mode, str(ms), stdin=stdin)
    if keep is not None:
        os.close(stdin)
        t.fds.append(keep)
    t.wait_for("^ready")
    return t


def done(t: Target, timeout: float = 5.0) -> dict[str, str]:
    m = t.wait_for(r"^done (.*)", timeout)
    return dict(kv.split("=", 1) for kv in m.group(1).split())


def test_getpid_mmap_write_munmap_leave_task_unchanged():
    t = blocked_target("sleep", 700)
    with t:
        time.sleep(0.1)
        seize_stopped(t.pid)
        regs = pt.getregs(t.pid)
        maps0 = maps_text(t.pid)
        digest0 = memory_digest(t.pid)
        with Remote(t.pid) as r:
            assert r.regs == regs
            assert r.check(NR.getpid) == t.pid
            assert r.check(NR.gettid) == t.pid
            assert f"{r.mapping[0]:x}-{r.mapping[1]:x}" in maps_text(t.pid)
            page = r.mmap(PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)
            assert f"{page:x}-" in maps_text(t.pid)
            msg = b"injected write from spice\n"
            r.write(page, msg)
            assert r.read(page, len(msg)) == msg
            assert r.check(NR.write, 1, page, len(msg)) == len(msg)
            r.munmap(page, PAGE_SIZE)
            assert f"{page:x}-" not in maps_text(t.pid)
            # a failing syscall: raw -errno from syscall(), OSError from check()
            assert r.syscall(NR.close, 12345) == -9
            with pytest.raises(OSError) as e:
                r.check(NR.close, 12345)
            assert e.value.errno == 9
            addr = r.put(b"scratch bytes")
            assert r.read(addr, 13) == b"scratch bytes"
        assert maps_text(t.pid) == maps0
        assert memory_digest(t.pid) == digest0
        assert pt.getregs(t.pid) == regs
        detach(t)
        res = done(t)
        assert res["ret"] == "0" and res["bad"] == "0"
        assert resumed_in_time(res, 700, t)  # nanosleep resumed with its remaining time
        assert t.lines()[1] == "injected write from spice"


def in_parallel(fn, items) -> None:
    """fn(item) in one thread per item: each thread is the tracer of its own target, so slow
    machines (qemu TCG) process every target within its own timeline. Re-raises the first error."""
    errors: list[BaseException] = []

    def run(item) -> None:
        try:
            fn(item)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(it,)) for it in items]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if errors:
        raise errors[0]


def resumed_in_time(res: dict[str, str], ms: int, t: Target) -> bool:
    """The blocked syscall slept `ms` in all: not cut short, not started over at the seize (which
    happened >= 250 ms in, so a restart from scratch ends >= 250 ms late)."""
    return ms - 10 <= float(res["ms"]) < max(ms, t.detached_after) + 250


def detach(t: Target) -> None:
    pt.detach(t.pid)
    t.detached_after = (time.monotonic() - t.started) * 1000


# mode, blocking ms, expected result: the syscall continues as after a plain seize+detach
RESTART_CASES = [
    ("sleep", 1000, "0"),  # -ERESTART_RESTARTBLOCK: restart_syscall keeps the remaining time
    ("clock", 1000, "0"),
    ("absclock", 1000, "0"),  # -ERESTARTNOHAND
    ("futex", 1000, "-110"),  # timed FUTEX_WAIT: restart block, then ETIMEDOUT
    ("poll", 1000, "0"),  # poll timeout: restart block
]


def test_timed_syscalls_restart_with_remaining_time():
    """Seize mid-sleep, inject, detach: the sleep ends on time (all cases concurrently)."""

    def case(c: tuple[str, int, str]) -> None:
        mode, ms, ret = c
        with blocked_target(mode, ms) as t:
            time.sleep(0.3)
            seize_stopped(t.pid)
            regs = pt.getregs(t.pid)
            assert regs.orig_ax >= 0 and -signed64(regs.ax) in (514, 516), mode
            with Remote(t.pid) as r:
                for _ in range(20):
                    assert r.check(NR.getppid) == os.getpid()
            assert pt.getregs(t.pid) == regs, mode
            detach(t)
            res = done(t)
            assert res["ret"] == ret and res["bad"] == "0", (mode, res)
            assert resumed_in_time(res, ms, t), (mode, res, t.detached_after)

    in_parallel(case, RESTART_CASES)


@pytest.mark.parametrize("mode", ["read", "poll", "epoll"])
def test_blocked_read_receives_data_written_later(mode):
    """read/poll restart (-ERESTARTSYS / restart block) and get the data; epoll_wait is the kernel's
    exception (EINTR after any stop): the injected run must match a plain seize+detach."""
    results = []
    for injected in (False, True):
        rfd, wfd = os.pipe()
        with blocked_target(mode, 0, stdin=rfd) as t:
            os.close(rfd)
            time.sleep(0.05)
            seize_stopped(t.pid)
            regs = pt.getregs(t.pid)
            if injected:
                with Remote(t.pid) as r:
                    for _ in range(20):
                        r.check(NR.getpid)
                assert pt.getregs(t.pid) == regs
            pt.detach(t.pid)
            time.sleep(0.1)
            try:
                os.write(wfd, b"later")
            except BrokenPipeError:
                pass
            res = done(t)
            os.close(wfd)
            assert res["bad"] == "0"
            results.append((res["ret"], res["data"]))
    assert results[0] == results[1]
    if mode != "epoll":
        assert results[1] == (("5", "later") if mode == "read" else ("1", ""))


def test_pause_stays_paused_until_signal():
    with blocked_target("pause", 0) as t:
        time.sleep(0.05)
        seize_stopped(t.pid)
        with Remote(t.pid) as r:
            r.check(NR.getpid)
        pt.detach(t.pid)
        time.sleep(0.2)
        assert len(t.lines()) == 1  # -ERESTARTNOHAND restarted pause(): still waiting
        os.kill(t.pid, signal.SIGUSR1)
        res = done(t)
        assert res["ret"] == "-4" and res["bad"] == "0"


def test_signal_arriving_during_injection_is_delivered_once():
    """SIGUSR1 (handler, no SA_RESTART) sent while we inject: the kernel must see it exactly as if
    we were not there: pause() returns EINTR after detach, registers intact."""
    with blocked_target("pause", 0) as t:
        time.sleep(0.05)
        seize_stopped(t.pid)
        with Remote(t.pid) as r:
            r.check(NR.getpid)
            os.kill(t.pid, signal.SIGUSR1)
            for _ in range(5):
                assert r.check(NR.getpid) == t.pid
            # the handler frame was set up: the context to restore is now the handler's entry
            assert r.regs.ip != 0
        pt.detach(t.pid)
        res = done(t)
        assert res["ret"] == "-4" and res["bad"] == "0"


def test_sigstop_arriving_during_injection_leaves_task_stopped():
    with blocked_target("sleep", 300) as t:
        time.sleep(0.05)
        seize_stopped(t.pid)
        with Remote(t.pid) as r:
            os.kill(t.pid, signal.SIGSTOP)
            for _ in range(5):
                r.check(NR.getpid)
        pt.detach(t.pid)
        wait_state(t.pid, "T")
        time.sleep(0.4)
        assert len(t.lines()) == 1
        os.kill(t.pid, signal.SIGCONT)
        res = done(t)
        assert res["ret"] == "0" and res["bad"] == "0"


def same_fpu_state(a: bytes, b: bytes) -> bool:
    """Equal register contents. XSTATE_BV is ignored: the CPU's init tracking may flip a bit for a
    component whose registers hold their initial values (ptrace then reports those values)."""
    return len(a) == len(b) and a[:512] == b[:512] and a[520:] == b[520:]  # fxsave: a == b


def test_regs_fpregs_xstate_roundtrip_and_modify():
    with Target.prog("fpu") as t:
        t.wait_for("xmm15=1111222233334444 r15=1111222233334444")
        seize_stopped(t.pid)
        regs = pt.getregs(t.pid)
        pt.setregs(t.pid, regs.copy())
        assert pt.getregs(t.pid) == regs
        assert pt.arch_prctl(t.pid, pt.ARCH_GET_FS) == regs.fs_base
        fp = pt.get_fpregs(t.pid)
        pt.set_fpregs(t.pid, fp)
        assert bytes(pt.get_fpregs(t.pid)) == bytes(fp)
        # the xsave area, or the fxsave image on CPUs without XSAVE (qemu's default TCG CPU)
        xsave = pt.has_xstate(t.pid)
        get, put = (pt.get_xstate, pt.set_xstate) if xsave else (pt.get_fpstate, pt.set_fpregs_raw)
        xs = bytearray(get(t.pid))
        assert len(xs) == (pt.xstate_size(t.pid) if xsave else 512) and len(xs) >= 512
        xmm15 = 160 + 15 * 16
        assert xs[xmm15 : xmm15 + 8] == (0x1111222233334444).to_bytes(8, "little")
        assert bytes(fp)[xmm15 : xmm15 + 8] == bytes(xs[xmm15 : xmm15 + 8])
        put(t.pid, bytes(xs))
        assert get(t.pid) == bytes(xs)
        # injecting leaves the FPU alone
        with Remote(t.pid) as r:
            for _ in range(10):
                r.check(NR.getpid)
        assert same_fpu_state(get(t.pid), bytes(xs))
        xs[xmm15 : xmm15 + 8] = (0x5555666677778888).to_bytes(8, "little")
        put(t.pid, bytes(xs))
        regs.r15 = 0x9999AAAABBBBCCCC
        pt.setregs(t.pid, regs)
        n = len(t.lines())
        pt.detach(t.pid)
        t.wait_for("xmm15=5555666677778888 r15=9999aaaabbbbcccc")
        assert all("1111" in ln for ln in t.lines()[1:n])


def test_caller_provided_site_and_scratch():
    """The restore backend maps its own trampoline page and hands Remote the site."""
    with blocked_target("sleep", 600) as t:
        time.sleep(0.05)
        seize_stopped(t.pid)
        regs = pt.getregs(t.pid)
        maps0 = maps_text(t.pid)
        with Remote(t.pid) as boot:
            page = boot.mmap(PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)
            boot.write(page, b"\x0f\x05\xcc")  # syscall; int3
            boot.check(NR.mprotect, page, PAGE_SIZE, 5)  # r-x
        with Remote(t.pid, site=page, scratch_size=0) as r:
            assert r.mapping is None
            assert r.check(NR.getpid) == t.pid
            scratch = r.mmap(PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)
        with Remote(t.pid, site=page, scratch=(scratch, PAGE_SIZE)) as r:
            # struct passing through scratch: PR_SET_MM_MAP_SIZE writes sizeof(prctl_mm_map)
            addr = r.put(b"\0" * 4, 64)
            r.check(NR.prctl, prctl.PR_SET_MM, prctl.PR_SET_MM_MAP_SIZE, addr)
            assert int.from_bytes(r.read(addr, 4), "little") == ctypes.sizeof(prctl.PrctlMmMap)
            r.munmap(scratch, PAGE_SIZE)
            r.munmap(page, PAGE_SIZE)
        assert maps_text(t.pid) == maps0
        assert pt.getregs(t.pid) == regs
        detach(t)
        res = done(t)
        assert res["ret"] == "0" and res["bad"] == "0" and resumed_in_time(res, 600, t)


def test_fork_event_recorded():
    with blocked_target("sleep", 600) as t:
        time.sleep(0.05)
        seize_stopped(t.pid)
        pt.setoptions(t.pid, pt.O_TRACESYSGOOD | pt.O_TRACEFORK)
        with Remote(t.pid) as r:
            child = r.check(NR.fork)
            assert r.events == [(pt.EVENT_FORK, child)]
            # the child is auto-attached, stopped before its first instruction
            st = pt.waitpid(child)
            assert st.event == pt.EVENT_STOP
            assert status_ppid(child) == t.pid
            os.kill(child, signal.SIGKILL)
            assert pt.waitpid(child).signaled
            r.check(NR.wait4, child, 0, 0, 0)
        pt.setoptions(t.pid, pt.O_TRACESYSGOOD)
        pt.detach(t.pid)
        res = done(t)
        assert res["ret"] == "0" and res["bad"] == "0"


def status_ppid(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def test_task_killed_during_injection_raises_taskgone():
    with blocked_target("sleep", 5000) as t:
        seize_stopped(t.pid)
        r = Remote(t.pid)
        os.kill(t.pid, signal.SIGKILL)
        with pytest.raises(TaskGone):
            for _ in range(100):
                r.check(NR.getpid)
        assert r.closed


def disassemble(code: bytes, vma: int) -> list[str]:
    """The instructions of x86-64 machine code placed at vma, as objdump prints them."""
    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"spice-code-{os.getpid()}.bin")
    with open(path, "wb") as f:
        f.write(code)
    try:
        dis = subprocess.run(["objdump", "-D", "-b", "binary", "-m", "i386:x86-64", f"--adjust-vma={vma:#x}",
                              path], capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(path)
    return [ln.split("\t")[-1].strip() for ln in dis.splitlines() if re.match(r"\s+[0-9a-f]+:\t", ln)]


def test_trampoline_encoding():
    """The fallback is exactly: syscall; lea rsp,[flags]; popfq; 15 movs; mov rsp,[sp]; jmp [ip]."""
    ins = disassemble(trampoline_code(0x10000, 0x10000 + inject.DATA_OFFSET), 0x10000)
    slot = {n: 0x10000 + inject.DATA_OFFSET + 8 * i for i, n in enumerate(inject.SLOTS)}
    assert ins[0] == "syscall"
    assert ins[1].startswith("lea ") and f"{slot['flags']:#x}" in ins[1] and "%rsp" in ins[1]
    assert ins[2] in ("popf", "popfq")
    loads = {}
    for i in ins[3:18]:
        m = re.search(r"mov\s+0x[0-9a-f]+\(%rip\),%(\w+)\s+# (0x[0-9a-f]+)", i)
        assert m, i
        loads[m.group(1)] = int(m.group(2), 16)
    names = {"rax": "ax", "rbx": "bx", "rcx": "cx", "rdx": "dx", "rsi": "si", "rdi": "di", "rbp": "bp"}
    assert {names.get(k, k): v for k, v in loads.items()} == {n: slot[n] for n in inject.SLOTS[1:16]}
    m = re.search(r"mov\s+0x[0-9a-f]+\(%rip\),%rsp\s+# (0x[0-9a-f]+)", ins[18])
    assert m and int(m.group(1), 16) == slot["sp"]
    assert ins[19].startswith("jmp") and f"{slot['ip']:x}" in ins[19]
    assert len(ins) == 20


# --- tracer death ------------------------------------------------------------------------------------


def _orphan_at_exit_stop(pid: int, use_chain: bool) -> None:
    """Leave the task the way a dying tracer would at the worst point: an injected syscall done,
    registers pointing at our code, then the kernel's detach."""
    r = Remote(pid)
    if use_chain:
        # tear down the trampoline first, then stand at the chain site as in the final munmap
        tramp = r.mapping
        frame_sp = r._chain_frame(read_maps(pid))
        assert frame_sp is not None
        assert r._inject(r._chain[0], frame_sp, NR.munmap, tramp[0], tramp[1] - tramp[0]) == 0
    else:
        assert r.check(NR.getpid) == pid
    pt.detach(pid)


def orphaned(mode: str, orphan, case: object) -> tuple[dict, Target, tuple]:
    """A blocked target (mode: sleep, read, absclock for 1 s) seized and orphaned by orphan(pid),
    i.e. left by its tracer mid-injection; its result once it went on, checked for what every mode
    must show (nothing inconsistent; a read gets the data written after the orphaning)."""
    rfd, wfd = os.pipe()
    with blocked_target(mode, 1000, stdin=rfd) as t:
        os.close(rfd)
        t.fds.append(wfd)
        time.sleep(0.3)
        seize_stopped(t.pid)
        orphan(t.pid)
        t.detached_after = (time.monotonic() - t.started) * 1000
        if mode == "read":
            time.sleep(0.05)
            os.write(wfd, b"orphan")
        res = done(t)
    what = (mode, case, res, t.detached_after)
    assert res["bad"] == "0", what
    if mode == "read":
        assert (res["ret"], res["data"]) == ("6", "orphan"), what
    return res, t, what


def test_orphaned_task_returns_to_its_context():
    """Tracer "dies" (detach) right after an injected syscall, with the task's registers pointing
    at our trampoline, or at the `syscall; ret` chain used for the final munmap."""

    def case(c: tuple[str, bool]) -> None:
        mode, use_chain = c
        res, t, what = orphaned(mode, lambda pid: _orphan_at_exit_stop(pid, use_chain), use_chain)
        if mode == "sleep" and use_chain:
            # documented: rt_sigreturn resets the restart block, so nanosleep starts over
            assert res["ret"] == "0" and 1290 <= float(res["ms"]) < t.detached_after + 1250, what
        elif mode != "read":
            assert res["ret"] == "0" and resumed_in_time(res, 1000, t), what

    in_parallel(case, [(m, c) for m in ("sleep", "read", "absclock") for c in (False, True)])


def _tracer(pid: int, seed: int, ready: int) -> None:
    """Forked tracer: endless Remote sessions with random numbers of injections."""
    rnd = random.Random(seed)
    seize_stopped(pid)
    os.write(ready, b"s")
    while True:
        with Remote(pid) as r:
            for _ in range(rnd.choice((0, 1, 5, 30))):
                assert r.check(NR.getpid) == pid
                a = r.put(b"x" * 64)
                assert r.read(a, 64) == b"x" * 64


def spawn_tracer(pid: int, seed: int) -> int:
    rfd, wfd = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            os.close(rfd)
            _tracer(pid, seed, wfd)
        finally:
            os._exit(1)
    os.close(wfd)
    assert os.read(rfd, 1) == b"s"
    os.close(rfd)
    return child


def test_tracer_sigkilled_mid_injection_leaves_target_running_correctly():
    """SIGKILL the tracer at random points of endless Remote sessions (bootstrap, injections,
    teardown): the self-checking target must keep running with intact registers and memory, and
    none of its nanosleeps may see EINTR."""
    rnd = random.Random(1234)
    with Target.prog("spin", "300") as t:
        t.wait_for(r"^n=\d+")
        kills = 0
        for i in range(40):
            tracer = spawn_tracer(t.pid, i)
            time.sleep(rnd.uniform(0, 0.02))
            os.kill(tracer, signal.SIGKILL)
            os.waitpid(tracer, 0)
            kills += 1
            assert status_tracer(t.pid) == 0
            assert "BAD" not in t.output() and state(t.pid) in "SR", t.output()[-500:]
        n = len(t.lines())
        t.wait_for(r"^n=\d+", timeout=5, count=n + 2)
        assert state(t.pid) in "SR"
        out = t.output()
        assert "BAD" not in out, out[-500:]
        last = t.lines()[-1]
        assert re.match(r"n=\d+ sum=\d+ bad=0 eintr=0$", last), last  # no syscall saw EINTR
        leaked = [ln for ln in maps_text(t.pid).splitlines() if " rwxp " in ln]
        assert len(leaked) <= kills


def status_tracer(pid: int) -> int:
    from progs import status_field

    return int(status_field(pid, "TracerPid"))


def test_find_sites_in_libc_and_vdso():
    with blocked_target("sleep", 300) as t:
        maps = read_maps(t.pid)
        s = find_sites(t.pid, maps)
        code = {a: procvm.read(t.pid, a, 9) for a in (s.plain, s.syscall_ret, s.sigreturn)}
        assert code[s.plain][:2] == b"\x0f\x05"
        assert code[s.syscall_ret][:3] == b"\x0f\x05\xc3"
        assert code[s.sigreturn] in (b"\x48\xc7\xc0\x0f\x00\x00\x00\x0f\x05",) or \
            code[s.sigreturn][:7] == b"\xb8\x0f\x00\x00\x00\x0f\x05"


def in_rseq_cs(pid: int, ip: int) -> bool:
    conf = pt.get_rseq_configuration(pid)
    cs_ptr = int.from_bytes(procvm.read(pid, conf.rseq_abi_pointer + RSEQ_CS_OFFSET, 8), "little")
    return bool(cs_ptr) and RseqCs.from_buffer_copy(procvm.read(pid, cs_ptr, 32)).contains(ip)


def test_rseq_critical_section_is_aborted_as_the_kernel_would():
    """A task stopped inside an rseq critical section must resume at its abort handler. Without
    the fixup, resuming it at our trampoline makes the kernel forget the section (rseq_cs cleared)
    and the task, put back inside it, spins there forever: the control case shows that."""
    for fixup in (True, False):
        with Target.prog("rseqspin") as t:
            t.wait_for("ready")
            while True:  # catch it inside the section (where it spends nearly all its time)
                time.sleep(0.01)
                seize_stopped(t.pid)
                ip = pt.getregs(t.pid).ip
                if in_rseq_cs(t.pid, ip):
                    break
                pt.detach(t.pid)
            with Remote(t.pid, rseq_fixup=fixup) as r:
                r.check(NR.getpid)
                moved = r.regs.ip != ip
            assert moved == fixup
            n = sum(1 for ln in t.lines() if ln.startswith("abort"))
            pt.detach(t.pid)
            time.sleep(0.2)
            aborts = sum(1 for ln in t.lines() if ln.startswith("abort")) - n
            assert (aborts > 0) == fixup, (fixup, aborts)


def test_without_chain_gadgets_the_plain_site_is_used_and_the_window_measured(monkeypatch):
    """A task without `syscall; ret` / rt_sigreturn gadgets (e.g. a static Go binary) bootstraps
    from any syscall instruction; the unprotected time is recorded in window_ns."""
    real = inject.find_sites

    def plain_only(pid, maps=None):
        s = real(pid, maps)
        return inject.Sites(plain=s.plain)

    monkeypatch.setattr(inject, "find_sites", plain_only)
    with blocked_target("sleep", 500) as t:
        time.sleep(0.05)
        seize_stopped(t.pid)
        regs = pt.getregs(t.pid)
        maps0 = maps_text(t.pid)
        r = Remote(t.pid)
        assert r._chain is None and len(r.window_ns) == 1
        assert r.check(NR.getpid) == t.pid
        r.close()
        assert len(r.window_ns) == 2 and all(0 < w < 1e9 for w in r.window_ns)
        print("unprotected windows (us):", [w // 1000 for w in r.window_ns])
        assert pt.getregs(t.pid) == regs and maps_text(t.pid) == maps0
        detach(t)
        res = done(t)
        assert res["ret"] == "0" and res["bad"] == "0" and resumed_in_time(res, 500, t)
