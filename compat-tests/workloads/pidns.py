# SPDX-License-Identifier: MIT
"""pidns: a process tree in a pid namespace of its own, as `unshare -p -f` and container runtimes
(runc's default) make it: the root is the namespace's init (pid 1 inside).

    python3 pidns.py OUTFILE

Re-executes itself under `unshare -p -f` (no new mount namespace: /proc stays the host's), becomes
a session leader, forks and reaps a few short-lived children (so the tree's pids inside are not
2, 3: a restore must set them), then forks a child which forks a grandchild. The root sends a
counter through a pipe to the child, which passes it on through a second pipe to the grandchild;
each checks it gets every number once, in order. The child also runs a thread that counts, owns
its pipe's read end (F_SETOWN itself: the image holds its pid inside) and keeps a SIGUSR2 from the
grandchild pending (blocked: the image's siginfo holds the sender's pid inside); the thread made a
POSIX timer (disarmed) that would signal it alone (SIGEV_THREAD_ID: the image holds its tid inside).
Every ~100 ms each appends
``tick=N role=main|child|grandchild pid=P token=T ppid=Q nspid=I seq=S thr=C tid=D owner=O pend=X``
(pid and ppid as seen inside the namespace, nspid: the namespace's inode, seq: the last counter
value passed on or read, thr: the child's thread's count so far, tid: that thread's tid inside,
owner: its pipe's F_GETOWN, pend: 1 if SIGUSR2 is pending; 0 in the others; pidfd: in the main,
the pid (inside) its pidfd of the child names, from its fdinfo, -1 if not a child of its own).
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import signal
import struct
import sys
import threading
import time

from wlproto import Output

BURNED = 3  # children forked and reaped before the tree's own: the child is pid 2 + BURNED inside


def _nsid() -> int:
    return os.stat("/proc/self/ns/pid").st_ino


_counted = [0, 0]  # the child's thread: its count, its tid


def _count() -> None:
    _counted[1] = threading.get_native_id()
    ev = ctypes.create_string_buffer(64)  # struct sigevent: value, signo, notify, thread id
    struct.pack_into("<QiiI", ev, 0, 0, signal.SIGUSR2, 4, _counted[1])  # SIGEV_THREAD_ID
    timer = ctypes.c_int()
    if ctypes.CDLL(None, use_errno=True).timer_create(time.CLOCK_MONOTONIC, ev, ctypes.byref(timer)):
        raise OSError(ctypes.get_errno(), "timer_create")
    while True:
        _counted[0] += 1
        time.sleep(0.01)


def _pidfd_target(fd: int) -> int:
    """The pid inside of the process the pidfd names, -1 if it is not a child of ours."""
    try:
        os.waitid(os.P_PIDFD, fd, os.WEXITED | os.WNOHANG)
    except ChildProcessError:
        return -1
    with open(f"/proc/self/fdinfo/{fd}") as f:
        return int(next(line.split()[-1] for line in f if line.startswith("NSpid:")))


def _relay(out: Output, src: int | None, dst: int | None, child: bool = False, pidfd: int = -1) -> None:
    seq = 0
    tick = 0
    while True:
        tick += 1
        if src is None:
            seq += 1
        else:
            got = os.read(src, 8)
            if len(got) != 8:
                out.fail(f"tick {tick}: pipe gave {got!r}")
            n = int.from_bytes(got, "little")
            if n != seq + 1:
                out.fail(f"tick {tick}: got {n} after {seq}")
            seq = n
        if dst is not None:
            os.write(dst, seq.to_bytes(8, "little"))
        owner = fcntl.fcntl(src, fcntl.F_GETOWN) if child else 0
        pend = int(signal.SIGUSR2 in signal.sigpending()) if child else 0
        out.line(tick, ppid=os.getppid(), nspid=_nsid(), seq=seq, thr=_counted[0], tid=_counted[1], owner=owner,
                 pend=pend, pidfd=_pidfd_target(pidfd) if pidfd >= 0 else 0)
        if src is None:
            time.sleep(0.1)


def main() -> None:
    if len(sys.argv) == 2:  # not yet in a pid namespace of its own
        os.execvp("unshare", ["unshare", "-p", "-f", sys.executable, "-B", "-E", "-s", os.path.abspath(__file__),
                              sys.argv[1], "inner"])
    if os.getpid() != 1:
        raise SystemExit(f"pidns: pid {os.getpid()}, not the namespace's init")
    os.setsid()
    out = Output(sys.argv[1])
    for _ in range(BURNED):
        p = os.fork()
        if p == 0:
            os._exit(0)
        os.waitpid(p, 0)
    r1, w1 = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(w1)
        fcntl.fcntl(r1, fcntl.F_SETOWN, os.getpid())
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})
        r2, w2 = os.pipe()
        if os.fork() == 0:
            os.close(w2)
            out.role = "grandchild"
            os.kill(os.getppid(), signal.SIGUSR2)
            _relay(out, r2, None)
        os.close(r2)
        out.role = "child"
        threading.Thread(target=_count, daemon=True).start()
        _relay(out, r1, w2, child=True)
    os.close(r1)
    _relay(out, None, w1, pidfd=os.pidfd_open(child))


if __name__ == "__main__":
    main()
