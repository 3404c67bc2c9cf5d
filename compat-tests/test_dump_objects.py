# SPDX-License-Identifier: MIT
"""Every object kind `spice dump` handles, held by one process that checks them all on every step:
deleted-but-open files (small, and sparse big ones in chunks), a FIFO and a pipe with queued data, a
memfd (fd with a position and seals, shared and private mappings, a copied-on-write page), a
directory fd, handlers/ignored signals, blocked masks with pending signals (process-wide and
per-thread), an itimer and a POSIX timer, rlimits, umask, personality, child-subreaper, a second
thread with its own sigaltstack and mask. Dumped by spice: real `criu restore` and `spice restore`
continue it; the same stopped process dumped by real CRIU and by spice gives the same images."""

from __future__ import annotations

import os
import time
from pathlib import Path

import harness
import pytest
from harness import criu_restore
from spice import spice, spice_restore
from test_dump_compare import compare_dirs, decode_all, dump_both

OBJECTS = r'''
import ctypes, fcntl, hashlib, mmap, os, resource, signal, stat, struct, sys, threading, time, zlib

out_path, d = sys.argv[1], sys.argv[2]
out = os.open(out_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
libc = ctypes.CDLL(None, use_errno=True)
token = int.from_bytes(os.urandom(4), "little") | 1
pid = os.getpid()

def emit(s):
    os.write(out, (s + "\n").encode())

def fail(msg):
    emit(f"FAIL role=main pid={pid} {msg}")
    os._exit(1)

# deleted-but-open files: a small one, a big sparse one (chunked ghost image), one positioned
small = open(os.path.join(d, "ghost-small"), "w+b")
small_data = b"ghost %d " % token * 40
small.write(small_data); small.flush(); os.unlink(small.name)
big = open(os.path.join(d, "ghost-big"), "w+b")
big.write(b"A" * 5000); big.seek(300000); big.write(b"B" * 7000); big.flush(); big.seek(1234)
os.unlink(big.name)
# a FIFO and a pipe with data queued in them
fifo = os.path.join(d, "fifo")
os.mkfifo(fifo)
fr = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
fw = os.open(fifo, os.O_WRONLY)
os.write(fw, b"fifo-%d" % token)
pr, pw = os.pipe()
os.write(pw, b"pipe-data-%d" % token)
orphan_r, orphan_w = os.pipe()  # a pipe whose read end is not in the tree: no data entry for it
os.close(orphan_r)
# a memfd: fd position and seals, shared mapping, private mapping with a copied page
mfd = os.memfd_create("spice-objects", os.MFD_ALLOW_SEALING)
pattern = bytes((i * 7 + token) & 0xFF for i in range(3 * 4096))
os.write(mfd, pattern)
fcntl.fcntl(mfd, 1033, 2)  # F_ADD_SEALS, F_SEAL_SHRINK
os.lseek(mfd, 100, os.SEEK_SET)
shared = mmap.mmap(mfd, 3 * 4096, mmap.MAP_SHARED)
private = mmap.mmap(mfd, 3 * 4096, mmap.MAP_PRIVATE)
private[0:4] = b"COW!"
anon_shared = mmap.mmap(-1, 2 * 4096, mmap.MAP_SHARED)
anon_shared[4096:4100] = b"SHAN"
dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
# signals
caught = []
signal.signal(signal.SIGUSR1, lambda s, f: caught.append(s))
signal.signal(signal.SIGUSR2, signal.SIG_IGN)
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGRTMIN + 1, signal.SIGWINCH})
os.kill(pid, signal.SIGRTMIN + 1)          # process-wide queue
signal.pthread_kill(threading.get_ident(), signal.SIGWINCH)  # this thread's queue
signal.signal(signal.SIGALRM, signal.SIG_IGN)
signal.setitimer(signal.ITIMER_REAL, 3600, 60)
class Sigevent(ctypes.Structure):
    _fields_ = [("value", ctypes.c_uint64), ("signo", ctypes.c_int), ("notify", ctypes.c_int),
                ("tid", ctypes.c_int), ("pad", ctypes.c_byte * 44)]
ev = Sigevent(0x5151, int(signal.SIGUSR2), 0, 0)
tid_ = ctypes.c_int()
assert libc.timer_create(1, ctypes.byref(ev), ctypes.byref(tid_)) == 0
its = struct.pack("qqqq", 100, 0, 7200, 0)
assert libc.timer_settime(tid_, 0, its, None) == 0
resource.setrlimit(resource.RLIMIT_NOFILE, (500, 600))
resource.setrlimit(resource.RLIMIT_CORE, (0, 4096))
os.umask(0o027)
libc.personality(0x0040000)  # ADDR_NO_RANDOMIZE
libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
# a second thread with its own alternate signal stack and blocked mask
altstack = ctypes.create_string_buffer(65536)
def worker():
    st = struct.pack("QiiQ", ctypes.addressof(altstack), 0, 0, 65536)
    assert libc.sigaltstack(st, None) == 0
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTTIN})
    while True:
        time.sleep(3600)
threading.Thread(target=worker, daemon=True).start()
time.sleep(0.05)

def state():
    small_now = os.pread(small.fileno(), 4096, 0)
    big_now = os.pread(big.fileno(), 8000, 0) + os.pread(big.fileno(), 8000, 300000)
    queued = struct.unpack("i", fcntl.ioctl(pr, 0x541B, b"\0" * 4))[0]  # FIONREAD
    fqueued = struct.unpack("i", fcntl.ioctl(fr, 0x541B, b"\0" * 4))[0]
    pend = sorted(int(s) for s in signal.sigpending())
    r, v = signal.getitimer(signal.ITIMER_REAL)
    if not (0 < r <= 3600 and v == 60):
        fail(f"itimer {r} {v}")
    parts = {"small": small_now, "big": big_now, "shared": bytes(shared), "private": bytes(private),
             "anon_shared": bytes(anon_shared[4096:4100]), "big_pos": big.tell(),
             "memfd_pos": os.lseek(mfd, 0, os.SEEK_CUR), "seals": fcntl.fcntl(mfd, 1034), "umask": os.umask(0o027),
             "nofile": resource.getrlimit(resource.RLIMIT_NOFILE), "core": resource.getrlimit(resource.RLIMIT_CORE),
             "usr2": signal.getsignal(signal.SIGUSR2), "dfd": os.readlink(f"/proc/self/fd/{dfd}")}
    global first_parts
    if first_parts is None:
        first_parts = parts
    diff = [k for k in parts if parts[k] != first_parts[k]]
    if diff:
        fail(f"changed: {diff} " + " ".join(f"{k}={str(parts[k])[:60]}/{str(first_parts[k])[:60]}" for k in diff))
    h = hashlib.sha256(repr(sorted((k, v) for k, v in parts.items())).encode())
    if small_now != small_data:
        fail("small ghost file changed")
    if big_now != b"A" * 5000 + b"\0" * 3000 + b"B" * 7000:
        fail("big ghost file changed")
    if bytes(shared) != pattern or bytes(private[4:]) != pattern[4:] or bytes(private[:4]) != b"COW!":
        fail("memfd contents changed")
    return h.hexdigest()[:16], queued, fqueued, pend

first_parts = None
first = state()
tick = 0
while True:
    tick += 1
    now = state()
    if now != first:
        fail(f"tick {tick}: state {now} != {first}")
    os.kill(pid, signal.SIGUSR1)
    emit(f"tick={tick} role=main pid={pid} token={token:x} objs={now[0]} pipe={now[1]} fifo={now[2]}")
    time.sleep(0.1)
'''


class Objects:
    """A self-checking Python program run like a harness workload (own session, stdio to a file):
    `python PROGRAM OUTFILE [DIR]`, one tick line per step, FAIL on any inconsistency."""

    def __init__(self, base: Path, source: str = "", name: str = "objects", pass_dir: bool = True) -> None:
        import subprocess
        import sys

        harness.make_subreaper()
        self.dir = base
        base.mkdir(parents=True, exist_ok=True)
        (base / f"{name}.py").write_text(source or OBJECTS)
        self.out = base / f"{name}.out"
        argv = [sys.executable, "-B", "-E", "-s", str(base / f"{name}.py"), str(self.out)]
        with open(base / "objects.log", "ab") as log:
            self.proc = subprocess.Popen(argv + ([str(base)] if pass_dir else []), cwd=base,
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True, close_fds=True)
        harness._popens[self.proc.pid] = self.proc
        self.pid = self.proc.pid
        self.wait_ticks(3)

    def lines(self, start: int = 0) -> list[harness.Line]:
        return harness.read_lines(self.out, start)[0]

    def wait_ticks(self, n: int, start: int = 0, timeout: float = 20) -> list[harness.Line]:
        deadline = time.monotonic() + harness.scaled(timeout)
        while True:
            lines = self.lines(start)
            bad = [ln for ln in lines if ln.failed]
            assert not bad, f"{bad[0].text}\n{(self.dir / 'objects.log').read_text()[-2000:]}"
            if len(lines) >= n:
                return lines
            assert time.monotonic() < deadline, f"objects: {len(lines)} lines\n" + \
                (self.dir / "objects.log").read_text()[-2000:]
            time.sleep(0.02)

    def mark(self) -> int:
        return self.out.stat().st_size

    def kill(self) -> None:
        harness.kill_pids([self.pid])


def _check_restored(obj: Objects, before: list[harness.Line], start: int) -> None:
    after = obj.wait_ticks(4, start)
    last = before[-1]
    assert after[0].tick == last.tick + 1, (last.text, after[0].text)
    for ln in after:
        assert ln.pid == obj.pid
        for key in ("token", "objs", "pipe", "fifo"):
            assert ln.fields[key] == last.fields[key], (key, last.text, ln.text)


@pytest.fixture
def objects(compat_tmp: Path, request: pytest.FixtureRequest):
    obj = Objects(compat_tmp / "objects" / request.node.name.replace("[", "-").replace("]", ""))
    yield obj
    obj.kill()
    harness.reap_zombie_children()


def _spice_dump(obj: Objects, images: Path, *extra: str) -> None:
    images.mkdir(parents=True, exist_ok=True)
    spice("dump", "-t", str(obj.pid), "-D", str(images), "-v4", "-o", "dump.log", *extra, log=images / "dump.log")


@pytest.mark.parametrize("restorer", ["criu", "spice"])
def test_objects_dumped_by_spice_restore_and_go_on(restorer: str, objects: Objects, criu_bin: Path) -> None:
    images = objects.dir / "images"
    _spice_dump(objects, images)
    harness.reap([objects.pid])
    before = objects.lines()
    assert not any(ln.failed for ln in before)
    start = objects.mark()
    pid = criu_restore(images) if restorer == "criu" else spice_restore(images)
    assert pid == objects.pid
    _check_restored(objects, before, start)
    if restorer == "spice":
        # the image holds CRIU's encoding (40000, its atoi of "00040000"); spice restore decodes it.
        # (CRIU 4.2.1 restore applies 40000 as is and so loses ADDR_NO_RANDOMIZE, for its own images too.)
        assert Path(f"/proc/{pid}/personality").read_text().strip() == "00040000"


def test_objects_images_hold_the_objects(objects: Objects, crit_bin: Path) -> None:
    images = objects.dir / "images"
    _spice_dump(objects, images, "--leave-running")
    names = {p.name for p in images.iterdir()}
    assert {"remap-fpath.img", "fifo-data.img", "pipes-data.img", "memfd.img"} <= names
    assert sum(n.startswith("ghost-file-") for n in names) == 2
    decode_all(crit_bin, sorted(p for p in images.glob("*.img") if not p.name.startswith("pages-")))
    from test_dump_compare import _decode

    files = _decode(crit_bin, images / "files.img")["entries"]
    types = [e["type"] for e in files]
    assert {"REG", "PIPE", "FIFO", "MEMFD"} <= set(types)
    pdata = _decode(crit_bin, images / "pipes-data.img")["entries"]
    assert any(e["bytes"] > 0 for e in pdata)
    core = _decode(crit_bin, images / f"core-{objects.pid}.img")["entries"][0]
    tc = core["tc"]
    assert len(tc["sigactions"]) == 62
    assert tc["rlimits"]["rlimits"][7] == {"cur": 500, "max": 600}
    assert tc["timers"]["real"]["isec"] == 60 and tc["timers"]["posix"][0]["isec"] == 100
    assert tc["personality"] == 40000  # CRIU's atoi of "00040000"
    assert tc["child_subreaper"] is True
    assert len(tc["signals_s"]["signals"]) == 1 and len(core["thread_core"]["signals_p"]["signals"]) == 1
    fs = _decode(crit_bin, images / f"fs-{objects.pid}.img")["entries"][0]
    assert fs["umask"] == 0o027
    objects.wait_ticks(len(objects.lines()) + 3)  # left running, unharmed


def test_objects_images_agree_with_criu(objects: Objects, crit_bin: Path) -> None:
    pid = objects.pid
    tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    criu_dir, spice_dir = dump_both(pid, [pid], objects.dir, stopped=True)
    assert len(tids) == 2
    timers = {
        "CORE": {"entries[*].tc.timers.real.vsec": "an itimer keeps counting down while stopped",
                 "entries[*].tc.timers.real.vusec": "an itimer keeps counting down while stopped",
                 "entries[*].tc.timers.posix[*].vsec": "a POSIX timer keeps counting down",
                 "entries[*].tc.timers.posix[*].vnsec": "a POSIX timer keeps counting down"},
        "GHOST_FILE": {"entries[*].atim": "reading the file for the dump updates its atime"},
    }
    problems = compare_dirs(crit_bin, criu_dir, spice_dir, running=False, extra_allowed=timers)
    assert not problems, "\n".join(problems[:40])
    objects.wait_ticks(len(objects.lines()) + 3)


SECCOMP = r'''
import ctypes, os, struct, sys, threading, time

out = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
libc = ctypes.CDLL(None, use_errno=True)
pid = os.getpid()
token = int.from_bytes(os.urandom(4), "little") | 1

def deny(nr, err):
    # BPF: load nr; if nr == NR return ERRNO(err) else ALLOW
    insns = [(0x20, 0, 0, 0), (0x15, 0, 1, nr), (0x06, 0, 0, 0x00050000 | err), (0x06, 0, 0, 0x7FFF0000)]
    prog = b"".join(struct.pack("HBBI", *i) for i in insns)
    buf = ctypes.create_string_buffer(prog)
    fprog = struct.pack("HxxxxxxQ", len(insns), ctypes.addressof(buf))
    assert libc.prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS
    assert libc.syscall(317, 1, 0, fprog) == 0, ctypes.get_errno()  # seccomp(SET_MODE_FILTER)

def probe(nr):
    # a bad pointer: unfiltered, the call fails with EFAULT and changes nothing
    r = libc.syscall(nr, ctypes.c_void_p(1), 1)
    return ctypes.get_errno() if r < 0 else 0

deny(170, 99)  # sethostname -> EDOM-ish 99, in every thread created after this
seen = {}
def worker():
    deny(171, 77)  # setdomainname -> 77, this thread only
    while True:
        seen["w"] = (probe(170), probe(171))
        time.sleep(0.05)
threading.Thread(target=worker, daemon=True).start()
tick = 0
while True:
    tick += 1
    m = (probe(170), probe(171))
    w = seen.get("w")
    if m != (99, 14) or (w is not None and w != (99, 77)):
        os.write(out, f"FAIL role=main pid={pid} seccomp main={m} worker={w}\n".encode())
        os._exit(1)
    wf = f"{w[0]},{w[1]}" if w else "0,0"
    os.write(out, f"tick={tick} role=main pid={pid} token={token:x} main={m[0]},{m[1]} worker={wf}\n".encode())
    time.sleep(0.1)
'''


def test_seccomp_filters(compat_tmp: Path, crit_bin: Path) -> None:
    """Two filter chains (the worker thread has one more filter than the main thread): the images
    equal CRIU's, and criu restore of spice's images brings both chains back."""
    prog = Objects(compat_tmp / "objects" / "seccomp", SECCOMP, "seccomp", pass_dir=False)
    try:
        pid = prog.pid
        criu_dir, spice_dir = dump_both(pid, [pid], prog.dir, stopped=True)
        problems = compare_dirs(crit_bin, criu_dir, spice_dir, running=False)
        assert not problems, "\n".join(problems[:40])
        from test_dump_compare import _decode

        filters = _decode(crit_bin, spice_dir / "seccomp.img")["entries"][0]["seccomp_filters"]
        assert len(filters) == 3  # main: [A]; worker: [A, B] (oldest first)
        prog.wait_ticks(len(prog.lines()) + 2)
        images = prog.dir / "images"
        _spice_dump(prog, images)
        harness.reap([pid])
        before = prog.lines()
        start = prog.mark()
        assert criu_restore(images) == pid
        after = prog.wait_ticks(3, start)
        assert after[0].tick == before[-1].tick + 1 and all(ln.fields["main"] == "99,14" for ln in after)
        assert after[-1].fields["worker"] == "99,77"
    finally:
        prog.kill()
        harness.reap_zombie_children()


LOCKS = r'''
import fcntl, os, struct, sys, time

out = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
pid = os.getpid()
token = int.from_bytes(os.urandom(4), "little") | 1
a = os.open("flock.file", os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(a, fcntl.LOCK_EX)
b = os.open("posix.file", os.O_RDWR | os.O_CREAT, 0o644)
fcntl.lockf(b, fcntl.LOCK_EX, 10, 10)
c = os.open("ofd.file", os.O_RDWR | os.O_CREAT, 0o644)
fcntl.fcntl(c, 37, struct.pack("hhqqi4x", fcntl.F_RDLCK, 0, 0, 0, 0))  # F_OFD_SETLK, whole file
tick = 0
while True:
    tick += 1
    os.write(out, f"tick={tick} role=main pid={pid} token={token:x}\n".encode())
    time.sleep(0.1)
'''


class LocksProg(Objects):
    def __init__(self, base: Path) -> None:
        super().__init__(base, LOCKS, "locks", pass_dir=False)

    def locks(self) -> list[str]:
        inodes = {os.stat(self.dir / n).st_ino for n in ("flock.file", "posix.file", "ofd.file")}
        return sorted(ln.split()[1] + " " + ln.split()[3] for ln in Path("/proc/locks").read_text().splitlines()
                      if int(ln.split()[5].rsplit(":", 1)[1]) in inodes)


def test_file_locks(compat_tmp: Path, crit_bin: Path) -> None:
    """Without --file-locks the dump refuses (CRIU's message) and the task runs on; with it the
    locks are in filelocks.img as CRIU writes them, and criu restore -l takes them again."""
    prog = LocksProg(compat_tmp / "objects" / "locks")
    try:
        pid = prog.pid
        held = prog.locks()
        assert len(held) == 3, held
        refused = spice("dump", "-t", str(pid), "-D", str(prog.dir), "--leave-running", check=False)
        assert refused.returncode == 1 and "You can try --file-locks to dump them" in refused.stderr
        assert harness.process_state(pid) not in ("T", None) and prog.locks() == held
        criu_dir, spice_dir = dump_both(pid, [pid], prog.dir, stopped=True, criu_extra=("--file-locks",),
                                        spice_extra=("--file-locks",))
        problems = compare_dirs(crit_bin, criu_dir, spice_dir, running=False)
        assert not problems, "\n".join(problems[:40])
        images = prog.dir / "images"
        _spice_dump(prog, images, "--file-locks")
        harness.reap([pid])
        start = prog.mark()
        assert criu_restore(images, extra_args=["--file-locks"]) == pid
        prog.wait_ticks(2, start)
        assert prog.locks() == held
    finally:
        prog.kill()
        harness.reap_zombie_children()


SHARED = r'''
import mmap, os, sys, time

out = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
token = int.from_bytes(os.urandom(4), "little") | 1
shm = mmap.mmap(-1, 3 * 4096, mmap.MAP_SHARED)  # one shmem object, mapped in both processes
shm[4096:4104] = token.to_bytes(8, "little")
child = os.fork()
role = "child" if child == 0 else "parent"
me = os.getpid()
slot = 0 if child == 0 else 8  # each writes its own counter, reads the other's
tick = 0
seen = 0
while True:
    tick += 1
    shm[slot:slot + 8] = tick.to_bytes(8, "little")
    other = int.from_bytes(shm[8 - slot:16 - slot], "little")
    if other < seen or int.from_bytes(shm[4096:4104], "little") != token:
        os.write(out, f"FAIL role={role} pid={me} other went {seen} -> {other}\n".encode())
        os._exit(1)
    seen = other
    os.write(out, f"tick={tick} role={role} pid={me} token={token:x}\n".encode())
    time.sleep(0.1)
'''


@pytest.mark.parametrize("restorer", ["criu", "spice"])
def test_shared_memory_between_processes(restorer: str, compat_tmp: Path, crit_bin: Path) -> None:
    """MAP_SHARED|MAP_ANONYMOUS memory shared by a parent and its child is one memfd in the images
    (as CRIU writes it) and is shared again after the restore."""
    prog = Objects(compat_tmp / "objects" / f"shared-{restorer}", SHARED, "shared", pass_dir=False)
    try:
        pids = [prog.pid] + [int(c) for c in Path(f"/proc/{prog.pid}/task/{prog.pid}/children").read_text().split()]
        assert len(pids) == 2
        criu_dir, spice_dir = dump_both(prog.pid, pids, prog.dir, stopped=True)
        problems = compare_dirs(crit_bin, criu_dir, spice_dir, running=False)
        assert not problems, "\n".join(problems[:40])
        images = prog.dir / "images"
        _spice_dump(prog, images)
        harness.reap(pids)
        before = prog.lines()
        start = prog.mark()
        assert (criu_restore(images) if restorer == "criu" else spice_restore(images)) == prog.pid
        after = prog.wait_ticks(8, start)
        for role in ("parent", "child"):
            last = max(ln.tick for ln in before if ln.role == role)
            mine = [ln for ln in after if ln.role == role]
            assert mine and mine[0].tick == last + 1, (role, last, mine[:1])
    finally:
        harness.kill_pids([prog.pid])
        harness.reap_zombie_children()
