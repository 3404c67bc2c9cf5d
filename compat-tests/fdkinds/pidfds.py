# SPDX-License-Identifier: MIT
"""pidfds: process handles, as Go's os/exec, systemd and asyncio's pidfd child watcher hold them.

    python pidfds.py OUTFILE [outside]

The process forks a child (which ticks too, role ``child``), and holds:

* a pidfd of that child (blocking): every tick it asks waitid(P_PIDFD, WNOHANG) whether the child
  exited and reports ``reaped=0`` until it did, then the signal that killed it (``reaped=sig15``);
  it also checks pidfd_send_signal(pidfd, 0) reaches the child while it lives;
* a pidfd of itself, PIDFD_NONBLOCK (``selfnb=1``: the flag is still set);
* a pidfd of a child that already exited and was reaped (``dead=1``: it polls readable).

With ``outside`` it also holds a pidfd of pid 1 (outside its tree: a dump must refuse it).
Every ~100 ms: ``tick=N role=main pid=P token=T seq=N child=C selfnb=1 dead=1 reaped=R``, and the
child ``tick=N role=child pid=C token=T seq=N``.
"""

from __future__ import annotations

import fcntl
import os
import select
import signal
import sys
import time

TICK = 0.1


def main() -> None:
    if len(sys.argv) not in (2, 3):
        sys.exit("usage: pidfds.py OUTFILE [outside]")
    token = int.from_bytes(os.urandom(8), "little") | 1
    out = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    child = os.fork()
    if child == 0:
        run(out, "child", token, lambda tick: "")
    child_fd = os.pidfd_open(child)
    self_fd = os.pidfd_open(os.getpid(), os.O_NONBLOCK)
    gone = os.fork()
    if gone == 0:
        os._exit(7)
    dead_fd = os.pidfd_open(gone)
    os.waitpid(gone, 0)
    keep = [os.pidfd_open(1)] if sys.argv[2:] == ["outside"] else []
    reaped = "0"

    def state(tick: int) -> str:
        nonlocal reaped
        if reaped == "0":
            info = os.waitid(os.P_PIDFD, child_fd, os.WEXITED | os.WNOHANG)
            if info is not None:
                reaped = f"sig{info.si_status}" if info.si_code == os.CLD_KILLED else f"exit{info.si_status}"
            else:
                signal.pidfd_send_signal(child_fd, 0)
        selfnb = int(bool(fcntl.fcntl(self_fd, fcntl.F_GETFL) & os.O_NONBLOCK))
        dead = int(bool(select.select([dead_fd], [], [], 0)[0]))
        return f" child={child} selfnb={selfnb} dead={dead} reaped={reaped}{' outside=1' if keep else ''}"

    run(out, "main", token, state)


def run(out: int, role: str, token: int, extra) -> None:
    start = time.monotonic()
    tick = 0
    while True:
        tick += 1
        os.write(out, f"tick={tick} role={role} pid={os.getpid()} token={token:016x} seq={tick}{extra(tick)}\n"
                 .encode())
        delay = start + tick * TICK - time.monotonic()
        if delay < -1.0:  # restored after a pause: pace from now on
            start = time.monotonic() - tick * TICK
        elif delay > 0:
            time.sleep(delay)


if __name__ == "__main__":
    main()
