# SPDX-License-Identifier: MIT
"""setns(2), and running a small function inside another task's namespaces.

What a namespace holds is often reachable only from inside it: /proc/sys/kernel/hostname and the
SysV/mqueue sysctls under /proc/sys resolve in the *reader's* uts/ipc namespace, not in that of
the /proc/<pid> they are reached through. `call_in` forks a short-lived child that setns()es into
the namespaces of a task and runs a function there; the caller (dumper, restorer) never leaves its
own namespaces. The child sends its result back through a pipe (marshal: plain data, and no json
import on the dump/restore path) and exits with os._exit (no atexit handler, buffer or finally
block of the parent runs twice).
"""

from __future__ import annotations

import marshal
import os

from .clone3 import CLONE_NEWIPC, CLONE_NEWNET, CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWUTS
from .syscalls import NR, syscall

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

FLAGS = {"uts": CLONE_NEWUTS, "ipc": CLONE_NEWIPC, "net": CLONE_NEWNET, "mnt": CLONE_NEWNS, "pid": CLONE_NEWPID}


class NsCallError(Exception):
    """The function failed inside the namespaces (message: what it raised), or the child died."""


def setns(fd: int, nstype: int) -> None:
    syscall(NR.setns, fd, nstype)


def call_in(pid: int, kinds: tuple[str, ...], fn: Callable[[], object]) -> object:
    """fn() run in a child that joined pid's namespaces of these kinds ("uts", "ipc"...): its
    result (plain data: str, int, list, dict...). OSError: a namespace of pid could not be
    opened; NsCallError: setns or fn failed there (its message), or the child died."""
    fds = []
    try:
        for kind in kinds:
            fds.append(os.open(f"/proc/{pid}/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC))
        r, w = os.pipe2(os.O_CLOEXEC)
        child = os.fork()
        if child == 0:  # pragma: no cover - runs in the child, reported through the pipe
            _child(w, list(zip(fds, kinds, strict=True)), fn)
        os.close(w)
        with os.fdopen(r, "rb") as f:
            data = f.read()
    finally:
        for fd in fds:
            os.close(fd)
    _, status = os.waitpid(child, 0)
    try:
        ok, value = marshal.loads(data)
    except (ValueError, EOFError, TypeError):
        raise NsCallError(f"the helper in {pid}'s namespaces died (wait status {status:#x})") from None
    if not ok:
        raise NsCallError(value)
    return value


def _child(w: int, joins: list[tuple[int, str]], fn: Callable[[], object]) -> None:
    try:
        for fd, kind in joins:
            try:
                setns(fd, FLAGS[kind])
            except OSError as e:
                raise OSError(e.errno, f"setns into its {kind} namespace: {os.strerror(e.errno)}") from None
        out = [True, fn()]
    except OSError as e:
        out = [False, e.strerror if not e.filename else f"{e.filename}: {e.strerror}"]
    except BaseException as e:  # noqa: BLE001 - anything goes back to the parent as a message
        out = [False, f"{type(e).__name__}: {e}"]
    try:
        data = marshal.dumps(out)
        while data:
            data = data[os.write(w, data):]
    finally:
        os._exit(0)
