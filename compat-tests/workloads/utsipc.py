# SPDX-License-Identifier: MIT
"""utsipc: a process tree in uts and ipc namespaces of its own, as `unshare -u -i` and container
runtimes (runc's default: pid, net, ipc, uts, mnt) make them.

    python3 utsipc.py OUTFILE

Re-executes itself under `unshare -u -i` (same pid), names its uts namespace (a random host and
domain name) and changes limits of its ipc namespace (kernel.msgmax, kernel.sem, kernel.shmmni,
fs.mqueue.msg_max, kernel.msg_next_id: random values), then forks a child. Every ~100 ms each of
them reads them all back from its own namespaces and appends
``tick=N role=main|child pid=P token=T host=H dom=D msgmax=M sem=A,B,C,D shmmni=S mqmax=Q
msgnext=I shared=1`` (shared: the child lives in its parent's namespaces).
"""

from __future__ import annotations

import ctypes
import os
import random
import socket
import sys
import time

from wlproto import Output

SYSCTLS = {"msgmax": "kernel/msgmax", "sem": "kernel/sem", "shmmni": "kernel/shmmni",
           "mqmax": "fs/mqueue/msg_max", "msgnext": "kernel/msg_next_id"}


def _sysctl(path: str, value: str | None = None) -> str:
    with open(f"/proc/sys/{path}", "r+" if value is not None else "r") as f:
        if value is not None:
            f.write(value)
            f.seek(0)
        return ",".join(f.read().split())


def _setup(token: int) -> None:
    rnd = random.Random(token)
    socket.sethostname(f"uts-{token & 0xFFFFFF:06x}")
    dom = f"dom-{rnd.getrandbits(24):06x}".encode()
    if ctypes.CDLL(None, use_errno=True).setdomainname(dom, len(dom)) != 0:
        raise OSError(ctypes.get_errno(), "setdomainname")
    _sysctl("kernel/msgmax", str(10000 + rnd.randrange(50000)))
    _sysctl("kernel/sem", f"{200 + rnd.randrange(50)} 32000 {30 + rnd.randrange(10)} {100 + rnd.randrange(50)}")
    _sysctl("kernel/shmmni", str(1000 + rnd.randrange(3000)))
    _sysctl("fs/mqueue/msg_max", str(20 + rnd.randrange(50)))
    _sysctl("kernel/msg_next_id", str(100 + rnd.randrange(1000)))


def _state(parent: int | None) -> dict[str, str]:
    with open("/proc/sys/kernel/domainname") as f:
        got = {"host": socket.gethostname(), "dom": f.read().strip()}
    got.update({k: _sysctl(p) for k, p in SYSCTLS.items()})
    if parent is not None:
        got["shared"] = str(int(all(os.readlink(f"/proc/self/ns/{k}") == os.readlink(f"/proc/{parent}/ns/{k}")
                                    for k in ("uts", "ipc"))))
    return got


def _run(out: Output, parent: int | None) -> None:
    first = _state(parent)
    tick = 0
    while True:
        tick += 1
        now = _state(parent)
        if now != first:
            out.fail(f"tick {tick}: namespace state {now}, was {first}")
        out.line(tick, **now)
        time.sleep(0.1)


def main() -> None:
    if len(sys.argv) == 2:  # not yet in namespaces of its own: unshare keeps our pid (no --fork)
        os.execvp("unshare", ["unshare", "-u", "-i", sys.executable, "-B", "-E", "-s", os.path.abspath(__file__),
                              sys.argv[1], "inner"])
    out = Output(sys.argv[1])
    _setup(out.token)
    me = os.getpid()
    if os.fork() == 0:
        out.role = "child"
        _run(out, me)
    _run(out, None)


if __name__ == "__main__":
    main()
