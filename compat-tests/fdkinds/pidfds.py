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

import ticks


def main() -> None:
    if len(sys.argv) not in (2, 3):
        sys.exit("usage: pidfds.py OUTFILE [outside]")
    out = ticks.Out(sys.argv[1])
    child = os.fork()
    if child == 0:
        mine = ticks.Out(sys.argv[1], "child", out.token)
        ticks.run(mine.line)
    child_fd = os.pidfd_open(child)
    self_fd = os.pidfd_open(os.getpid(), os.O_NONBLOCK)
    gone = os.fork()
    if gone == 0:
        os._exit(7)
    dead_fd = os.pidfd_open(gone)
    os.waitpid(gone, 0)
    keep = [os.pidfd_open(1)] if sys.argv[2:] == ["outside"] else []
    reaped = "0"

    def step(tick: int) -> None:
        nonlocal reaped
        if reaped == "0":
            info = os.waitid(os.P_PIDFD, child_fd, os.WEXITED | os.WNOHANG)
            if info is not None:
                reaped = f"sig{info.si_status}" if info.si_code == os.CLD_KILLED else f"exit{info.si_status}"
            else:
                signal.pidfd_send_signal(child_fd, 0)
        selfnb = int(bool(fcntl.fcntl(self_fd, fcntl.F_GETFL) & os.O_NONBLOCK))
        dead = int(bool(select.select([dead_fd], [], [], 0)[0]))
        out.line(tick, child=child, selfnb=selfnb, dead=dead, reaped=reaped, **({"outside": 1} if keep else {}))

    ticks.run(step)


if __name__ == "__main__":
    main()
