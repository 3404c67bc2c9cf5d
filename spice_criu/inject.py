# SPDX-License-Identifier: MIT
"""Execute syscalls inside a ptrace-stopped task: what CRIU does with its parasite, without one.

    with Remote(tid) as r:                 # tid is PTRACE_SEIZEd and stopped (dump.seize.freeze)
        pid = r.check(NR.getpid)
        addr = r.put(b"hello")             # into the remote scratch area
        r.check(NR.write, 1, addr, 5)

How a syscall is injected: registers are set to (ip=site, ax=nr, args), the task is resumed with
PTRACE_SYSCALL to its syscall-entry and syscall-exit stops, and ax is read back.

Registers. The task's registers at creation (`Remote.regs`) are restored exactly, and only from a
stop inside get_signal() (a PTRACE_EVENT_STOP, reached with PTRACE_INTERRUPT from the last injected
syscall's exit stop): that is where the kernel applies syscall restart on resume, so a task caught
in nanosleep/read/futex/epoll_wait (ax=-ERESTART*, orig_ax=nr) continues exactly as after a plain
seize/detach. Restoring them at a syscall-exit stop would instead return -ERESTART* to user space.
FPU/xstate is never touched (syscalls preserve it). A signal that arrives meanwhile is delivered
to the task's real context (as the kernel would), and injection continues from the new context.

Robustness when the tracer dies (SIGKILL mid-dump): the kernel detaches and the task resumes with
whatever registers we last set. So, after bootstrapping, injections run at a trampoline we map in
the task: `syscall` followed by a fallback that reloads the original context, with restart
semantics applied (UserRegs.restarted()), and jumps back. The bootstrap mmap of that trampoline and its
final munmap run at a `syscall; ret` site found in the task's libc/ld.so, with an rt_sigframe of
the original context written below the red zone and `ret` landing on a `mov $15,%rax; syscall`
(rt_sigreturn) gadget. Remaining deviations for an orphaned task: see WINDOWS.

For dump: `Remote.mapping` is our own VMA in the task while the Remote is open (leave it out of
the dumped mm); `Remote.regs` are the task's registers (rseq abort already applied).
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
import time

from .linux import procvm
from .linux import ptrace as pt
from .linux.mman import MAP_ANONYMOUS, MAP_PRIVATE, PAGE_SIZE, PROT_EXEC, PROT_READ, PROT_WRITE, page_align
from .linux.signals import build_rt_sigframe
from .linux.syscalls import NR, libc, raise_errno
from .record import FrozenRecord, Record

TYPE_CHECKING = False  # typing costs ~10 ms of start-up; annotations are strings
if TYPE_CHECKING:
    from typing import NoReturn

WINDOWS = """\
If the tracer dies while a task is being injected, the task continues by itself:
- inside the trampoline phase: the pending injected syscall (if any) runs, then the fallback restores
  the original registers with restart semantics applied; the trampoline mapping stays (leaked);
- during the bootstrap mmap and the final munmap (chain available): the syscall runs, then
  rt_sigreturn restores the original context, FPU and sigmask. rt_sigreturn resets the kernel's
  restart block, so a syscall that was interrupted with -ERESTART_RESTARTBLOCK (relative nanosleep,
  clock_nanosleep, poll, timed futex wait) is re-executed from the start: its timeout starts over
  (it sleeps longer, never returns early or fails);
- without a chain (no `syscall; ret` and rt_sigreturn gadget in the task, or no room below its stack
  pointer): during the bootstrap mmap and the final munmap the task would continue after a foreign
  syscall instruction with clobbered registers (measured per Remote in `window_ns`);
- a signal handler that runs while the orphaned task sits in the fallback sees the syscall restarted
  rather than interrupted (EINTR) for -ERESTARTNOHAND / non-SA_RESTART -ERESTARTSYS;
- the rt_sigreturn path restores the current (possibly temporary, sigsuspend/ppoll) sigmask as the
  task's mask; tasks with a CET user shadow stack enabled are not supported by the chain.
"""

# The hot path calls syscall(2) without argtypes: ctypes converts small ints and prebuilt pointer
# objects fastest that way (~0.8 us per call here, against ~2 us with 5 declared argtypes).
_ptrace = libc._FuncPtr(("syscall", libc))
_ptrace.restype = ctypes.c_long
_NR_PTRACE = NR.ptrace
_SETREGS, _GETREGS, _SYSCALL, _PEEKUSER, _CONT = pt.SETREGS, pt.GETREGS, pt.SYSCALL, pt.PEEKUSER, pt.CONT
_ENTRY = struct.Struct("<8Q")
_RESULT = struct.Struct("<q")
#: default action "ignore", no side effect: SIGURG, SIGWINCH, SIGCHLD (SIGCONT would resume a stopped group)
_BATCH_SIGNALS = (23, 28, 17)
_WALL = pt.WALL
_SYSCALL_STOP = pt.SYSCALL_STOP
_U64 = 0xFFFF_FFFF_FFFF_FFFF
_waitpid = os.waitpid

RED_ZONE = 128
_SIGRETURN_GADGETS = (b"\x48\xc7\xc0\x0f\x00\x00\x00\x0f\x05", b"\xb8\x0f\x00\x00\x00\x0f\x05")
_SYSCALL_RET = b"\x0f\x05\xc3"
_SYSCALL_INSN = b"\x0f\x05"
_SEARCH_LIMIT = 64 << 20  # bytes of executable text scanned per file for gadgets


class TaskGone(ProcessLookupError):
    """The task exited or was killed while we were injecting."""


# --- trampoline ---------------------------------------------------------------------------------------

# Fallback register loads: (UserRegs field, REX prefix, ModRM for `mov reg, [rip+disp32]`)
_LOADS = (("ax", 0x48, 0x05), ("bx", 0x48, 0x1D), ("cx", 0x48, 0x0D), ("dx", 0x48, 0x15), ("si", 0x48, 0x35),
          ("di", 0x48, 0x3D), ("bp", 0x48, 0x2D), ("r8", 0x4C, 0x05), ("r9", 0x4C, 0x0D), ("r10", 0x4C, 0x15),
          ("r11", 0x4C, 0x1D), ("r12", 0x4C, 0x25), ("r13", 0x4C, 0x2D), ("r14", 0x4C, 0x35), ("r15", 0x4C, 0x3D))
SLOTS = ("flags",) + tuple(n for n, _, _ in _LOADS) + ("sp", "ip")
DATA_OFFSET = 256  # fallback register slots, after the code in the trampoline page


def trampoline_code(code_addr: int, data_addr: int) -> bytes:
    """`syscall` then: rsp=&slot.flags; popfq; load 15 GP regs; rsp=slot.sp; jmp *slot.ip."""
    out = bytearray(_SYSCALL_INSN)

    def riprel(prefix: bytes, slot: str) -> None:
        end = code_addr + len(out) + len(prefix) + 4
        out.extend(prefix + struct.pack("<i", data_addr + 8 * SLOTS.index(slot) - end))

    riprel(b"\x48\x8d\x25", "flags")  # lea rsp, [rip+flags]
    out.append(0x9D)  # popfq
    for name, rex, modrm in _LOADS:
        riprel(bytes((rex, 0x8B, modrm)), name)  # mov reg, [rip+slot]
    riprel(b"\x48\x8b\x25", "sp")  # mov rsp, [rip+sp]
    riprel(b"\xff\x25", "ip")  # jmp [rip+ip]
    return bytes(out)


BATCH_OFFSET = 512  # the batch loop, after the fallback register slots
BATCH_ENTRY = 64  # bytes per batch table entry: nr, six arguments, result (8 bytes each)
#: the head of every batch loop (the dump's here, the restore's in restore/batch.py): the syscall
#: of the table entry at rbx into its registers
LOAD_ENTRY = bytes.fromhex(
    "488b03"  # mov rax, [rbx]
    "488b7b08"  # mov rdi, [rbx+8]
    "488b7310"  # mov rsi, [rbx+16]
    "488b5318"  # mov rdx, [rbx+24]
    "4c8b5320"  # mov r10, [rbx+32]
    "4c8b4328"  # mov r8, [rbx+40]
    "4c8b4b30"  # mov r9, [rbx+48]
)


def batch_code(code_addr: int, fallback_addr: int) -> tuple[bytes, int]:
    """The batch loop (rbx = table, r12 = entries): per entry load nr and args, `syscall`, store rax
    in the entry; then jmp to the fallback (the original context). Returns the code and the offset
    just after its `syscall` instruction (where the task stops when the last entry signals it)."""
    loop = LOAD_ENTRY
    after_syscall = len(loop) + 2
    loop += _SYSCALL_INSN + bytes.fromhex(
        "48894338"  # mov [rbx+56], rax
        "4883c340"  # add rbx, 64
        "49ffcc"  # dec r12
    )
    loop += b"\x75" + struct.pack("<b", -(len(loop) + 2))  # jnz loop
    jmp_end = code_addr + len(loop) + 5
    return loop + b"\xe9" + struct.pack("<i", fallback_addr - jmp_end), after_syscall


def fallback_slots(regs: pt.UserRegs) -> bytes:
    r = regs.restarted()
    return struct.pack(f"<{len(SLOTS)}Q", *(getattr(r, n) for n in SLOTS))


# --- finding code in the task -------------------------------------------------------------------------


class Mapping(FrozenRecord):
    start: int
    end: int
    perms: str
    offset: int
    dev: str
    inode: int
    path: str


def read_maps(pid: int) -> list[Mapping]:
    out = []
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.split(None, 5)
            lo, hi = parts[0].split("-")
            out.append(Mapping(int(lo, 16), int(hi, 16), parts[1], int(parts[2], 16), parts[3], int(parts[4]),
                               parts[5].strip() if len(parts) > 5 else ""))
    return out


class Sites(Record):
    plain: int | None = None  # any `syscall` instruction
    syscall_ret: int | None = None  # `syscall; ret`
    sigreturn: int | None = None  # `mov $15, %rax; syscall`


_site_cache: dict[tuple, tuple[int | None, int | None, int | None]] = {}


def _scan(pid: int, m: Mapping) -> tuple[int | None, int | None, int | None]:
    """Offsets (in the mapping) of a `syscall`, a `syscall; ret` and an rt_sigreturn gadget."""
    key = (m.path, m.dev, m.inode, m.offset, m.end - m.start) if m.inode else (m.path, m.end - m.start)
    hit = _site_cache.get(key)
    if hit is None:
        try:
            data = procvm.read(pid, m.start, min(m.end - m.start, _SEARCH_LIMIT))
        except OSError:
            return (None, None, None)

        def find(pat: bytes) -> int | None:
            i = data.find(pat)
            return None if i < 0 else i

        sig = None
        for g in _SIGRETURN_GADGETS:
            sig = find(g)
            if sig is not None:
                break
        hit = (find(_SYSCALL_INSN), find(_SYSCALL_RET), sig)
        if m.inode or m.path == "[vdso]":
            _site_cache[key] = hit
    return hit


def _search_order(m: Mapping) -> int:
    base = os.path.basename(m.path)
    if base.startswith("ld-linux") or base.startswith("ld-musl"):
        return 0
    if base.startswith(("libc.", "libc-")):  # glibc, musl (libc.musl-*)
        return 1
    if m.path == "[vdso]":
        return 3
    return 2


def find_sites(pid: int, maps: list[Mapping] | None = None) -> Sites:
    """Usable code in the task: prefers the dynamic loader and libc (small, always mapped)."""
    maps = read_maps(pid) if maps is None else maps
    found = Sites()
    execs = sorted((m for m in maps if "x" in m.perms and "r" in m.perms and m.path != "[vsyscall]"),
                   key=_search_order)
    for m in execs:
        plain, sret, sig = _scan(pid, m)
        if found.plain is None and plain is not None:
            found.plain = m.start + plain
        # the chain's two gadgets come from the same file so that both are surely mapped
        if found.syscall_ret is None and sret is not None and sig is not None:
            found.syscall_ret, found.sigreturn = m.start + sret, m.start + sig
        if found.plain is not None and found.syscall_ret is not None:
            break
    return found


# --- Remote ------------------------------------------------------------------------------------------


class Remote:
    """Syscalls, memory access and a scratch area in a PTRACE_SEIZEd, stopped task.

    tid:          a thread we traced with PTRACE_SEIZE (options must include PTRACE_O_TRACESYSGOOD),
                  currently in a ptrace stop other than a syscall-entry stop.
    site:         a `syscall` instruction to use instead of bootstrapping our own trampoline (the
                  restore backend's own page); no tracer-death fallback is set up then.
    scratch:      (addr, size) of caller-owned scratch memory (only with `site`); otherwise a scratch
                  area of `scratch_size` bytes is mapped (and unmapped on close).
    restore_regs: on close, put back the registers the task had at creation (after unmapping ours).
    maps:         the task's /proc/PID/maps (read_maps), if the caller has them: threads of one process
                  share them, and the bootstrap needs them only to find code and the stack.
    pin_cpu:      run tracer and task on the task's current CPU until close (each injection is two
                  ptrace stops; cross-CPU wakeups cost several times more, especially in VMs). This
                  changes the task's affinity meanwhile: meant for restore; a dump must not use it,
                  since a dying tracer would leave the task pinned.
    """

    def __init__(self, tid: int, *, site: int | None = None, scratch: tuple[int, int] | None = None,
                 scratch_size: int = 4 * PAGE_SIZE, restore_regs: bool = True, rseq_fixup: bool = True,
                 pin_cpu: bool = False, maps: list[Mapping] | None = None) -> None:
        self.tid = tid
        self._affinity: tuple[set[int], set[int]] | None = None
        if pin_cpu:
            self._pin()
        self.restore_regs = restore_regs
        self.events: list[tuple[int, int]] = []  # (PTRACE_EVENT_*, event message) seen while injecting
        self.window_ns: list[int] = []  # unprotected bootstrap/teardown windows (no-chain case)
        self.mapping: tuple[int, int] | None = None  # our mapping in the task: exclude it from dumps
        self.closed = False
        self._stack_saved: tuple[int, bytes] | None = None
        self._redo: tuple[int, int] | None = None
        self._data_addr = 0
        self._batch_stop = 0  # address after the batch loop's syscall (0: no batch loop)
        self._maps: list[Mapping] | None = None  # the mappings, while only read-only syscalls ran
        self._self_ids = (0, 0)  # (tgid, tid) as the task itself sees them (its pid namespace)
        self._chain: tuple[int, int] | None = None
        self._plain: int | None = None
        info = pt.get_syscall_info(tid)
        if info.op == pt.SYSCALL_INFO_ENTRY:
            raise ValueError(f"task {tid} is at a syscall-entry stop")
        self._at_exit = info.op == pt.SYSCALL_INFO_EXIT
        self.regs = pt.getregs(tid)  # the task's context, restored on close
        if rseq_fixup:
            rseq_abort_fixup(tid, self.regs)
        self._inj = self.regs.copy()
        self._inj_addr = ctypes.addressof(self._inj)
        self._inj_ref = ctypes.c_void_p(self._inj_addr)
        self._word = ctypes.c_ulong()
        self._word_ref = ctypes.c_void_p(ctypes.addressof(self._word))
        self._ax_off = pt.REG_OFFSET["ax"]
        self._sp = self.regs.sp
        self.scratch = 0
        self.scratch_size = 0
        if site is not None:
            self._site = site
            if scratch is not None:
                self.scratch, self.scratch_size = scratch
            elif scratch_size:
                size = page_align(scratch_size)
                self.scratch = self.check(NR.mmap, 0, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
                self.scratch_size = size
                self.mapping = (self.scratch, self.scratch + size)
        else:
            try:
                self._bootstrap(page_align(scratch_size), maps)
            except BaseException:
                self._abort()
                raise

    # -- the injection path --------------------------------------------------------------------------

    def syscall(self, nr: int, a1: int = 0, a2: int = 0, a3: int = 0, a4: int = 0, a5: int = 0,
                a6: int = 0) -> int:
        """Run syscall `nr` in the task; returns the raw kernel result (-errno on failure)."""
        return self._inject(self._site, self._sp, nr, a1, a2, a3, a4, a5, a6)

    def check(self, nr: int, *args: int) -> int:
        """Like syscall(), raising OSError(errno) on failure."""
        ret = self._inject(self._site, self._sp, nr, *args)
        if -4096 < ret < 0:
            raise_errno(f"remote syscall {nr} in {self.tid}", -ret)
        return ret

    def queries(self, calls: list[tuple[int, ...]]) -> list[int]:
        """Run syscalls that only read state (safe to run twice) in one resumption of the task; returns
        their raw results. Pointer arguments may use the lower half of the scratch area (the table
        of calls goes in the upper half).

        The trampoline's batch loop runs them (PTRACE_CONT, no syscall stops) and ends with tgkill of
        a signal the thread neither blocks nor handles: we see its signal-delivery-stop and suppress
        the signal; a tracer that died meanwhile leaves the kernel to discard it (ignored, untraced),
        and the loop jumps to the fallback, the original context. A real signal that comes first is
        delivered (as by syscall()) and the batch runs again. Without the trampoline, a usable
        signal, or with a seccomp filter (suspended only while we trace), one injection per call."""
        size = BATCH_ENTRY * (len(calls) + 1)
        sig = self._batch_signal() if self._batch_stop and calls and size <= self.scratch_size // 2 else 0
        if not sig:
            return [self.syscall(*c) for c in calls]
        table = self.scratch + self.scratch_size - size
        entries = [*calls, (NR.tgkill, *self._self_ids, sig)]
        self.write(table, b"".join(_ENTRY.pack(*((a & _U64) for a in e), *(0,) * (8 - len(e))) for e in entries))
        last = table + size - BATCH_ENTRY
        start = self.mapping[0] + BATCH_OFFSET
        tid = self.tid
        r = self._inj
        while True:
            r.ip, r.sp, r.orig_ax, r.bx, r.r12 = start, self._sp, _U64, table, len(entries)
            if _ptrace(_NR_PTRACE, _SETREGS, tid, 0, self._inj_ref) or _ptrace(_NR_PTRACE, _CONT, tid, 0, 0):
                self._failed()
            st = pt.WaitStatus(tid, _waitpid(tid, _WALL)[1])
            if st.gone:
                self.closed = True
                raise TaskGone(errno.ESRCH, f"task {tid} died: {st}")
            if st.stopsig == sig and not st.event:
                at = pt.getregs(tid)
                if at.bx == last and at.ip == self._batch_stop:
                    break
            if st.stopsig and not st.event:
                self._deliver(st.stopsig)  # a real signal: deliver it, then run the batch again
            # an event stop (group-stop, interrupt): run the batch again from the start
        self._at_exit = True  # a stop to leave through _to_signal_stop, like a syscall-exit stop
        raw = self.read(table, size - BATCH_ENTRY)
        return [_RESULT.unpack_from(raw, i + 56)[0] for i in range(0, len(raw), BATCH_ENTRY)]

    def _batch_signal(self) -> int:
        """A signal for the end of a batch: ignored by the thread's process (SIG_DFL ignore or
        SIG_IGN), not blocked nor pending in the thread; 0 if none (or a seccomp filter is set)."""
        try:
            with open(f"/proc/{self.tid}/status", "rb") as f:
                fields = dict(line.split(b":", 1) for line in f.read().splitlines() if b":" in line)
            # tgkill runs inside the task: its own pid namespace's numbers (the last of NStgid/NSpid;
            # a container's init is 1 there, and the host's numbers name nothing or someone else)
            self._self_ids = (int(fields[b"NStgid"].split()[-1]), int(fields[b"NSpid"].split()[-1]))
            if int(fields.get(b"Seccomp", b"0")) != 0:
                return 0
            busy = 0
            for name in (b"SigBlk", b"SigCgt", b"SigPnd", b"ShdPnd"):
                busy |= int(fields[name], 16)
        except (OSError, KeyError, ValueError):
            return 0
        return next((s for s in _BATCH_SIGNALS if not busy >> (s - 1) & 1), 0)

    def _inject(self, site: int, sp: int, nr: int, a1: int = 0, a2: int = 0, a3: int = 0, a4: int = 0,
                a5: int = 0, a6: int = 0) -> int:
        if self.closed:
            raise ValueError("Remote is closed")
        self._maps = None  # the syscall may change the mappings
        tid = self.tid
        r = self._inj
        r.ip = site
        r.sp = sp
        r.orig_ax = _U64
        r.ax = nr
        r.di = a1 & _U64
        r.si = a2 & _U64
        r.dx = a3 & _U64
        r.r10 = a4 & _U64
        r.r8 = a5 & _U64
        r.r9 = a6 & _U64
        while True:
            if _ptrace(_NR_PTRACE, _SETREGS, tid, 0, self._inj_ref) or _ptrace(_NR_PTRACE, _SYSCALL, tid, 0, 0):
                self._failed()
            st = _waitpid(tid, _WALL)[1]
            if st == _SYSCALL_STOP or not self._before_entry(pt.WaitStatus(tid, st)):
                break
            # a signal was delivered: the context changed, inject again from it
            if self._redo is not None:
                site, sp = self._redo
                self._redo = None
            else:
                sp = self.regs.sp
            ctypes.memmove(self._inj_addr, ctypes.addressof(self.regs), ctypes.sizeof(r))
            r.ip, r.sp, r.orig_ax, r.ax = site, sp, _U64, nr
            r.di, r.si, r.dx, r.r10, r.r8, r.r9 = (a & _U64 for a in (a1, a2, a3, a4, a5, a6))
        while True:
            if _ptrace(_NR_PTRACE, _SYSCALL, tid, 0, 0):
                self._failed()
            st = _waitpid(tid, _WALL)[1]
            if st == _SYSCALL_STOP:
                break
            self._inside(pt.WaitStatus(tid, st))
        self._at_exit = True
        if _ptrace(_NR_PTRACE, _PEEKUSER, tid, self._ax_off, self._word_ref):
            self._failed()
        v = self._word.value
        return v - (1 << 64) if v >= 1 << 63 else v

    def _failed(self) -> NoReturn:
        """A ptrace request failed: ESRCH on a task we hold stopped means it was killed."""
        err = ctypes.get_errno()
        if err == errno.ESRCH:
            try:
                st = pt.waitpid(self.tid)
            except ChildProcessError:
                st = None
            self.closed = True
            raise TaskGone(errno.ESRCH, f"task {self.tid} died: {st}")
        raise_errno(f"ptrace {self.tid}", err)

    def _before_entry(self, st: pt.WaitStatus) -> bool:
        """Handle a stop seen instead of the syscall-entry stop; True means "inject again"."""
        if st.gone:
            self.closed = True
            raise TaskGone(errno.ESRCH, f"task {self.tid} died: {st}")
        if st.signal_stop:
            self._deliver(st.stopsig)
            return True
        # group-stop or another event stop before the syscall ran: resume from it
        return True

    def _inside(self, st: pt.WaitStatus) -> None:
        """A stop between syscall entry and exit: fork/clone/exec events (with those options)."""
        if st.gone:
            self.closed = True
            raise TaskGone(errno.ESRCH, f"task {self.tid} died: {st}")
        if st.event:
            self.events.append((st.event, pt.geteventmsg(self.tid)))
            return
        raise RuntimeError(f"unexpected stop inside an injected syscall in {self.tid}: {st}")

    def _deliver(self, sig: int) -> None:
        """The task is in a signal-delivery-stop: deliver `sig` to its real context, as the kernel
        would have, and stop again right after (handler frame set up, handler not yet run)."""
        tid = self.tid
        chain_live = self._stack_saved is not None
        self._restore_stack()  # the kernel may put its signal frame where our chain frame is
        pt.setregs(tid, self.regs)
        pt.interrupt(tid)
        try:
            _resume_to_event_stop(tid, sig)
        except TaskGone:
            self.closed = True
            raise
        self.regs = pt.getregs(tid)
        self._at_exit = False
        self._sp = self.regs.sp
        if self._data_addr:
            self.write(self._data_addr, fallback_slots(self.regs))
        if chain_live:
            frame_sp = self._chain_frame(read_maps(tid))
            self._redo = (self._chain[0], frame_sp) if frame_sp is not None else (self._plain, self.regs.sp)

    def _to_signal_stop(self) -> None:
        """From a syscall-exit stop to a PTRACE_EVENT_STOP without running user code."""
        if not self._at_exit:
            return
        tid = self.tid
        pt.interrupt(tid)
        pt.cont(tid, 0)
        while True:
            st = pt.waitpid(tid)
            if st.gone:
                self.closed = True
                raise TaskGone(errno.ESRCH, f"task {tid} died: {st}")
            if st.event == pt.EVENT_STOP:
                break
            if st.signal_stop:
                self._deliver(st.stopsig)
                break
            pt.cont(tid, 0)
        self._at_exit = False

    # -- memory ---------------------------------------------------------------------------------------

    def read(self, addr: int, n: int) -> bytes:
        return procvm.read_any(self.tid, addr, n)

    def write(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        procvm.write_any(self.tid, addr, data)

    def put(self, data: bytes | bytearray, offset: int = 0) -> int:
        """Copy data into the scratch area at offset; returns its address in the task."""
        if offset < 0 or offset + len(data) > self.scratch_size:
            raise ValueError(f"{len(data)} bytes at {offset} do not fit the {self.scratch_size}-byte scratch")
        addr = self.scratch + offset
        self.write(addr, data)
        return addr

    def mmap(self, length: int, prot: int, flags: int, fd: int = -1, offset: int = 0, addr: int = 0) -> int:
        return self.check(NR.mmap, addr, length, prot, flags, fd, offset)

    def munmap(self, addr: int, length: int) -> None:
        self.check(NR.munmap, addr, length)

    # -- bootstrap / teardown -------------------------------------------------------------------------

    def _chain_frame(self, maps: list[Mapping]) -> int | None:
        """Write an rt_sigframe of the (restarted) original context below the red zone; returns the
        stack pointer to inject with, so that `syscall; ret` returns into rt_sigreturn."""
        if self._chain is None:
            return None
        regs = self.regs
        xstate = pt.get_fpstate(self.tid)
        top = regs.sp - RED_ZONE
        fp = (top - len(xstate) - 4) & ~63
        frame_sp = (fp - 440) & ~15
        frame = build_rt_sigframe(frame_sp, regs.restarted(reexecute=True), xstate, pt.getsigmask(self.tid),
                                  pretcode=self._chain[1])
        vma = next((m for m in maps if m.start <= regs.sp - 1 < m.end), None)
        if vma is None or "w" not in vma.perms or frame_sp < vma.start or vma.path == "[heap]":
            return None
        end = frame_sp + len(frame)
        self._stack_saved = (frame_sp, self.read(frame_sp, end - frame_sp))
        self.write(frame_sp, frame)
        return frame_sp

    def _restore_stack(self) -> None:
        if self._stack_saved is not None:
            addr, data = self._stack_saved
            self._stack_saved = None
            self.write(addr, data)

    def _bootstrap(self, scratch_size: int, maps: list[Mapping] | None) -> None:
        maps = read_maps(self.tid) if maps is None else maps
        sites = find_sites(self.tid, maps)
        if sites.syscall_ret is not None:
            self._chain = (sites.syscall_ret, sites.sigreturn)
        self._plain = sites.plain
        frame_sp = self._chain_frame(maps)
        if frame_sp is None:
            self._chain = None
            if sites.plain is None:
                raise OSError(errno.ENOEXEC, f"no syscall instruction found in task {self.tid}")
        size = PAGE_SIZE + scratch_size
        t0 = time.perf_counter_ns()
        if frame_sp is not None:
            base = self._inject(self._chain[0], frame_sp, NR.mmap, 0, size, PROT_READ | PROT_WRITE | PROT_EXEC,
                                MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        else:
            base = self._inject(sites.plain, self.regs.sp, NR.mmap, 0, size, PROT_READ | PROT_WRITE | PROT_EXEC,
                                MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        if -4096 < base < 0:
            raise_errno(f"mmap in task {self.tid}", -base)
        self.mapping = (base, base + size)
        self._data_addr = base + DATA_OFFSET
        code = trampoline_code(base, self._data_addr)
        batch, self._batch_stop = batch_code(base + BATCH_OFFSET, base + len(_SYSCALL_INSN))
        page = (code.ljust(DATA_OFFSET, b"\xcc") + fallback_slots(self.regs)).ljust(BATCH_OFFSET, b"\xcc") + batch
        self.write(base, page)
        self._batch_stop += base + BATCH_OFFSET
        # park the task at the fallback: from here on, tracer death is handled by the trampoline
        self._inj.ip = base + len(_SYSCALL_INSN)
        pt.setregs(self.tid, self._inj)
        if frame_sp is None:
            self.window_ns.append(time.perf_counter_ns() - t0)
        self._restore_stack()
        self._site = base
        self._sp = self.regs.sp
        self.scratch = base + PAGE_SIZE
        self.scratch_size = scratch_size
        self._maps = maps  # still what the task has (but ours) at close if only queries() ran

    def _unmap(self) -> None:
        """munmap our mapping: from the chain site if we can (the trampoline cannot unmap itself and
        return), else from a plain site (an unprotected window, measured), else the caller's site."""
        start, end = self.mapping
        frame_sp = None
        if self._chain is not None:
            frame_sp = self._chain_frame(self._maps if self._maps is not None else read_maps(self.tid))
        t0 = time.perf_counter_ns()
        if frame_sp is not None:
            ret = self._inject(self._chain[0], frame_sp, NR.munmap, start, end - start)
        elif self._plain is not None:
            ret = self._inject(self._plain, self.regs.sp, NR.munmap, start, end - start)
        else:
            ret = self._inject(self._site, self._sp, NR.munmap, start, end - start)
        if -4096 < ret < 0:
            raise_errno(f"munmap in task {self.tid}", -ret)
        self.mapping = None
        self._data_addr = 0
        self._batch_stop = 0
        if self.restore_regs:
            self._to_signal_stop()
            pt.setregs(self.tid, self.regs)
            if frame_sp is None and self._plain is not None:
                self.window_ns.append(time.perf_counter_ns() - t0)
        self._restore_stack()

    def _abort(self) -> None:
        """Best-effort cleanup after a failed bootstrap."""
        try:
            if self.mapping is not None:
                self._unmap()
            else:
                self._restore_stack()
                if self.restore_regs:
                    self._to_signal_stop()
                    pt.setregs(self.tid, self.regs)
        except OSError:
            pass
        self.closed = True

    def close(self) -> None:
        """Unmap our trampoline/scratch and put the original registers back (task stays stopped)."""
        if self.closed:
            self._unpin()
            return
        try:
            if self.mapping is not None:
                self._unmap()
            elif self.restore_regs:
                self._to_signal_stop()
                pt.setregs(self.tid, self.regs)
        finally:
            self.closed = True
            self._unpin()

    def _pin(self) -> None:
        with open(f"/proc/{self.tid}/stat") as f:
            cpu = int(f.read().rsplit(")", 1)[1].split()[36])
        saved = (os.sched_getaffinity(0), os.sched_getaffinity(self.tid))
        try:
            os.sched_setaffinity(self.tid, {cpu})
            os.sched_setaffinity(0, {cpu})
        except OSError:
            os.sched_setaffinity(self.tid, saved[1])
            return
        self._affinity = saved

    def _unpin(self) -> None:
        if self._affinity is not None:
            mine, theirs = self._affinity
            self._affinity = None
            try:
                os.sched_setaffinity(self.tid, theirs)
            except ProcessLookupError:
                pass
            os.sched_setaffinity(0, mine)

    def __enter__(self) -> Remote:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is TaskGone:
            self.closed = True
            self._unpin()
            return
        self.close()


def rseq_abort_fixup(tid: int, regs: pt.UserRegs) -> bool:
    """If the stopped task is inside an rseq critical section, move it to the section's abort_ip
    (regs and the task) and clear rseq_cs, as the kernel does on its way back to user mode.

    Resuming the task anywhere else first (an injection) would make the kernel silently drop the
    section instead; a dump wants the fixed-up registers too. Returns True if it moved the task."""
    conf = pt.get_rseq_configuration(tid)
    if conf is None or not conf.rseq_abi_pointer:
        return False
    from .linux.rseq import RSEQ_CS_OFFSET, RseqCs  # a restore never needs it

    cs_ptr = struct.unpack("<Q", procvm.read_any(tid, conf.rseq_abi_pointer + RSEQ_CS_OFFSET, 8))[0]
    if not cs_ptr:
        return False
    cs = RseqCs.from_buffer_copy(procvm.read_any(tid, cs_ptr, ctypes.sizeof(RseqCs)))
    if not cs.contains(regs.ip):
        return False
    regs.ip = cs.abort_ip
    pt.setregs(tid, regs)
    procvm.write_any(tid, conf.rseq_abi_pointer + RSEQ_CS_OFFSET, b"\0" * 8)
    return True


def _resume_to_event_stop(tid: int, sig: int | None) -> pt.WaitStatus:
    """With a PTRACE_INTERRUPT pending: resume the task delivering `sig` (None: it is running
    already) until its PTRACE_EVENT_STOP, delivering signals that come first as the kernel would."""
    while True:
        if sig is not None:
            pt.cont(tid, sig)
        st = pt.waitpid(tid)
        if st.gone:
            raise TaskGone(errno.ESRCH, f"task {tid} died: {st}")
        if st.event == pt.EVENT_STOP:
            return st
        sig = st.stopsig if st.signal_stop else 0


def stop_for_injection(tid: int) -> pt.WaitStatus:
    """PTRACE_INTERRUPT a seized, running task and wait for its PTRACE_EVENT_STOP."""
    pt.interrupt(tid)
    return _resume_to_event_stop(tid, None)
