# SPDX-License-Identifier: MIT
"""utsipc: a process tree in uts and ipc namespaces of its own, as `unshare -u -i` and container
runtimes (runc's default: pid, net, ipc, uts, mnt) make them.

    python3 utsipc.py OUTFILE

Re-executes itself under `unshare -u -i` (same pid), names its uts namespace (a random host and
domain name) and changes limits of its ipc namespace (kernel.msgmax, kernel.sem, kernel.shmmni,
fs.mqueue.msg_max, kernel.msg_next_id: random values), and makes SysV objects in it: a message
queue holding three messages nobody reads (``queued``: their types and texts), a queue the child
sends a numbered message to every tick and the root reads them all from (``got``: how many; one
missing or out of order is a FAIL), and a semaphore set with a fixed value and one the root raises
every tick (``semc``). Then it forks the child. Every ~100 ms each of them reads everything back
from its own namespaces and appends ``tick=N role=main|child pid=P token=T host=H dom=D msgmax=M
sem=A,B,C,D shmmni=S mqmax=Q queued=Q semv=V [semc=C got=G | shared=1]`` (shared: the child lives
in its parent's namespaces).
"""

from __future__ import annotations

import ctypes
import os
import random
import socket
import sys
import time

from wlproto import Output

SYSCTLS = {"msgmax": "kernel/msgmax", "sem": "kernel/sem", "shmmni": "kernel/shmmni", "mqmax": "fs/mqueue/msg_max"}
IPC_CREAT, IPC_NOWAIT, MSG_COPY, GETVAL = 0o1000, 0o4000, 0o40000, 12
ENOMSG = 42
libc = ctypes.CDLL(None, use_errno=True)
libc.msgrcv.restype = ctypes.c_ssize_t
libc.msgrcv.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_long, ctypes.c_int]
libc.msgsnd.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


def _ok(ret: int, what: str) -> int:
    if ret < 0:
        raise OSError(ctypes.get_errno(), what)
    return ret


def _send(qid: int, mtype: int, text: bytes) -> None:
    buf = ctypes.create_string_buffer(mtype.to_bytes(8, "little") + text)
    _ok(libc.msgsnd(qid, buf, len(text), 0), "msgsnd")


def _recv(qid: int, n: int, flags: int) -> tuple[int, bytes] | None:
    buf = ctypes.create_string_buffer(8 + 256)
    got = libc.msgrcv(qid, buf, 256, n, flags)
    if got < 0 and ctypes.get_errno() == ENOMSG:
        return None
    _ok(got, "msgrcv")
    return int.from_bytes(buf.raw[:8], "little"), buf.raw[8:8 + got]


def _semop(sid: int, num: int, op: int) -> None:
    sops = (ctypes.c_ushort * 3)(num, op & 0xFFFF, 0)
    _ok(libc.semop(sid, sops, 1), "semop")


def _semval(sid: int, num: int) -> int:
    return _ok(libc.semctl(sid, num, GETVAL), "semctl(GETVAL)")


def _sysctl(path: str, value: str | None = None) -> str:
    with open(f"/proc/sys/{path}", "r+" if value is not None else "r") as f:
        if value is not None:
            f.write(value)
            f.seek(0)
        return ",".join(f.read().split())


def _setup(token: int) -> tuple[int, int, int]:
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
    fixed = _ok(libc.msgget(token & 0x7FFFFFFF, IPC_CREAT | 0o640), "msgget")
    for i, text in enumerate((b"first", b"", f"third-{token:x}".encode())):
        _send(fixed, i + 1, text)
    chan = _ok(libc.msgget(0, IPC_CREAT | 0o600), "msgget")
    sems = _ok(libc.semget(0x5EED, 2, IPC_CREAT | 0o666), "semget")
    _semop(sems, 0, 1 + rnd.randrange(100))
    return fixed, chan, sems


def _state(parent: int | None, ids: tuple[int, int, int]) -> dict[str, str]:
    with open("/proc/sys/kernel/domainname") as f:
        got = {"host": socket.gethostname(), "dom": f.read().strip()}
    got.update({k: _sysctl(p) for k, p in SYSCTLS.items()})
    queued = [_recv(ids[0], n, IPC_NOWAIT | MSG_COPY) for n in range(4)]
    got["queued"] = "/".join(f"{m[0]}:{m[1].decode()}" for m in queued if m is not None)
    got["semv"] = str(_semval(ids[2], 0))
    if parent is not None:
        got["shared"] = str(int(all(os.readlink(f"/proc/self/ns/{k}") == os.readlink(f"/proc/{parent}/ns/{k}")
                                    for k in ("uts", "ipc"))))
    return got


def _run(out: Output, parent: int | None, ids: tuple[int, int, int]) -> None:
    first = _state(parent, ids)
    tick = got = 0
    while True:
        tick += 1
        now = _state(parent, ids)
        if now != first:
            out.fail(f"tick {tick}: namespace state {now}, was {first}")
        if parent is not None:  # the child: one numbered message a tick
            _send(ids[1], 1, str(tick).encode())
            out.line(tick, **now)
        else:  # the root: every message in order, and a semaphore raised once a tick
            while (m := _recv(ids[1], 0, IPC_NOWAIT)) is not None:
                got += 1
                if int(m[1]) != got:
                    out.fail(f"tick {tick}: message {m[1].decode()} from the child, expected {got}")
            _semop(ids[2], 1, 1)
            out.line(tick, **now, semc=_semval(ids[2], 1), got=got)
        time.sleep(0.1)


def main() -> None:
    if len(sys.argv) == 2:  # not yet in namespaces of its own: unshare keeps our pid (no --fork)
        os.execvp("unshare", ["unshare", "-u", "-i", sys.executable, "-B", "-E", "-s", os.path.abspath(__file__),
                              sys.argv[1], "inner"])
    out = Output(sys.argv[1])
    ids = _setup(out.token)
    me = os.getpid()
    if os.fork() == 0:
        out.role = "child"
        _run(out, me, ids)
    _run(out, None, ids)


if __name__ == "__main__":
    main()
