# SPDX-License-Identifier: MIT
"""`spice service --address SOCK [-d] [--pidfile F]`: criu's RPC service daemon.

A listening SOCK_SEQPACKET socket; every connection is served by a forked worker running the same
request loop as `swrk` (rpc.work), with the connecting process (SO_PEERCRED) as the client whose fds
images_dir_fd/work_dir_fd name. As in criu, rst_sibling and inherit_fd need swrk (a service worker
is no child of the client and shares no fds with it). SIGTERM/SIGINT stop it and remove the socket.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import stat
import sys

from .cli import Options
from .errors import SpiceError
from .log import log
from .rpc import Conn, guard_stdio, work

DEFAULT_ADDRESS = "./criu_service.socket"  # criu's CR_DEFAULT_SERVICE_ADDRESS


def _listen(path: str) -> socket.socket:
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)  # a stale socket of an earlier service
    sk = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        sk.bind(path)
        sk.listen(16)
    except OSError as e:
        sk.close()
        raise SpiceError("service", f"can't listen on {path}: {e.strerror}") from None
    return sk


def _daemonize() -> int:
    """daemon(1, 0): stdio to /dev/null, a new session. Returns the write end of a pipe the daemon
    closes once its pidfile is written: the caller (`spice service -d`) exits only then, so who ran it
    finds the socket listening and the pidfile in place."""
    r, w = os.pipe()
    if os.fork():
        os.close(w)
        os.read(r, 1)
        os._exit(0)
    os.close(r)
    os.setsid()
    nul = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(nul, fd)
    if nul > 2:
        os.close(nul)
    return w


def _write_pidfile(path: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise SpiceError("service", f"can't create pidfile {path}: {e.strerror}") from None
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))


def _reap(*_: object) -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass


class _Stop(Exception):
    pass


def _stop(*_: object) -> None:
    raise _Stop


def _serve_one(listener: socket.socket, conn: socket.socket) -> None:
    """The worker: a fresh process per client, as criu forks one."""
    listener.close()
    for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)
    rc = 1
    try:
        rc = work(Conn(conn, swrk=False))
    except BaseException as e:  # noqa: BLE001 - a worker never returns into the accept loop
        log.error("service", f"worker: {type(e).__name__}: {e}")
    finally:
        log.close()
        os._exit(rc & 0xFF)


def serve(o: Options) -> int:
    guard_stdio()
    path = os.path.abspath(o.address or DEFAULT_ADDRESS)
    if o.log_file:
        log.setup(o.verbosity, o.log_file, o.work_dir)
    listener = _listen(path)
    ready = _daemonize() if o.restore_detached else None
    if o.pidfile:
        _write_pidfile(o.pidfile)
    if ready is not None:
        os.close(ready)
    log.info(f"The service is ready at {path}")
    signal.signal(signal.SIGCHLD, _reap)
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        while True:
            conn, _ = listener.accept()
            try:
                pid = os.fork()
            except OSError as e:
                log.error("service", f"can't fork a worker: {e.strerror}")
                conn.close()
                continue
            if pid == 0:
                _serve_one(listener, conn)
            conn.close()
    except _Stop:
        log.info("The service is stopping")
    finally:
        listener.close()
        with contextlib.suppress(OSError):
            os.unlink(path)
    sys.stdout.flush()
    return 0
