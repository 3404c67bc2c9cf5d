# SPDX-License-Identifier: MIT
"""`spice swrk FD`: CRIU's RPC (images/rpc.proto, criu/cr-service.c), so runc, crun/libcriu, podman,
go-criu and pycriu can run spice as `criu`.

One criu_req per SOCK_SEQPACKET packet, one criu_resp back. One request per connection, except
that VERSION, FEATURE_CHECK (and the types spice refuses: CPUINFO_*, PAGE_SERVER*) may ask
keep_open; keep_open on anything else ends the session without a reply, as criu does. With
notify_scripts, every action-script point becomes a NOTIFY round trip (`Options.run_script`):
pre-dump, query-ext-files, post-dump; pre-restore, post-restore (with the root's pid), pre-resume,
post-resume. A client that answers no fails the operation (pre-/post-resume: only logged, like
criu). Errors: success=false, cr_errno (EBADRQC for bad options, ESRCH for a missing dump target,
EEXIST for a taken pid) and cr_errmsg = the first `Error` line of the log.

Requests and replies are spice_criu.images.lite messages (rpc.proto from the generated schema
table), not protobuf's: importing google.protobuf would cost a swrk DUMP or RESTORE more than the
rest of its start-up (tests/test_rpc_units.py checks the bytes against protobuf's).

Exit status as criu's: 0 after a successful request, 1 after a failed DUMP/RESTORE/CHECK, 255 for
a broken session (garbage, unknown type, refused keep_open, pre-dump).
"""

from __future__ import annotations

import _socket as socket  # the C module: `socket` (selectors, enum...) costs start-up on every swrk
import errno
import os
import struct
import sys

from . import CRIU_VERSION
from .errors import SpiceError
from .images.lite import DecodeError, decode, enum_names, enum_numbers, message_class
from .log import log

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: typing costs a swrk process's start-up
    from collections.abc import Callable
    from typing import Any


class rpc:  # noqa: N801 - stands for the generated rpc_pb2 module: rpc.criu_resp(...), rpc.DUMP
    """rpc.proto without protobuf: its messages as lite classes, criu_req_type's values by name."""

    criu_req = message_class("criu_req")
    criu_resp = message_class("criu_resp")
    criu_opts = message_class("criu_opts")


for _name, _number in enum_numbers("criu_req_type").items():
    setattr(rpc, _name, _number)

#: criu_req_type number -> name
REQ_NAMES = enum_names("criu_req_type")

PROTOCOL_ERROR = 255
#: request types that may keep the connection open for another request (cr-service.c)
KEEP_OPEN = {rpc.VERSION, rpc.FEATURE_CHECK, rpc.CPUINFO_DUMP, rpc.CPUINFO_CHECK, rpc.PAGE_SERVER,
             rpc.PAGE_SERVER_CHLD}
#: action scripts whose failure criu only logs (the tree is already restored)
NON_FATAL = ("pre-resume", "post-resume")


class SessionClosed(Exception):
    """The client went away (or sent something that is not a criu_req)."""


def guard_stdio() -> None:
    """pycriu closes fds 0-2 before exec'ing `criu swrk`: put /dev/null there, so no file or socket
    spice opens later lands on them, and give Python working sys.std* objects again."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            nul = os.open("/dev/null", os.O_RDWR)
            if nul != fd:
                os.dup2(nul, fd)
                os.close(nul)
    if sys.stdin is None:
        sys.stdin = open(0, closefd=False)  # noqa: SIM115 - the process's own stdin
    if sys.stdout is None:
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
    if sys.stderr is None:
        sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
    if log.out is None:
        log.out = sys.stderr


def peer_pid(sk: socket.socket) -> int:
    """The client's pid (SO_PEERCRED: for a socketpair, the process that created it)."""
    pid, _uid, _gid = struct.unpack("3i", sk.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    return pid


class Conn:
    """One client: packets in and out, and the NOTIFY round trips of the request being served."""

    def __init__(self, sk: socket.socket, swrk: bool) -> None:
        self.sk = sk
        self.swrk = swrk
        self.peer = peer_pid(sk)
        self.notified_pid: int | None = None  # the pid sent with post-restore (criu's reply keeps it)

    def recv(self) -> Any:
        """The next request; SessionClosed on EOF or on a packet that is not a criu_req."""
        try:
            size = len(self.sk.recv(1, socket.MSG_TRUNC | socket.MSG_PEEK))
            data = self.sk.recv(max(size, 1))
        except OSError as e:
            raise SessionClosed(f"can't receive a request: {e.strerror}") from None
        if not data:
            raise SessionClosed("the client closed the connection")
        try:  # no required-field check: an unknown type (an unknown field) gets criu's EMPTY answer
            return decode("criu_req", data)
        except DecodeError as e:  # not a criu_req
            raise SessionClosed(f"can't parse a request ({len(data)} bytes): {e}") from None

    def send(self, resp: Any) -> bool:
        try:
            self.sk.send(resp.SerializeToString())
            return True
        except OSError as e:
            log.error("rpc", f"can't send the {REQ_NAMES[resp.type]} response: {e.strerror}")
            return False

    def notifier(self, o: Any, scripts: bool) -> Callable[[str, int | None], None]:
        """Options.notify of a request: keeps the restored root's pid (post-restore) for the reply,
        and with notify_scripts makes every action one NOTIFY round trip."""

        def notify(action: str, pid: int | None = None) -> None:
            if action == "post-restore":
                self.notified_pid = pid
            if not scripts:
                return
            log.info(f"RPC: notify {action}" + (f" (pid {pid})" if pid else ""))
            resp = rpc.criu_resp(type=rpc.NOTIFY, success=True)
            resp.notify.script = action
            if pid is not None:
                resp.notify.pid = pid
            ok = self.send(resp)
            try:
                reply = self.recv() if ok else None
            except SessionClosed as e:
                log.error("rpc", f"no answer to the {action} notification: {e}")
                reply = None
            if reply is None or reply.type != rpc.NOTIFY or not reply.notify_success:
                if action in NON_FATAL:
                    log.error("rpc", f"RPC client reported script error ({action}), ignored: the tree is restored")
                    return
                raise SpiceError("rpc", f"RPC client reported script error ({action})")
            if action == "query-ext-files" and reply.HasField("opts"):
                o.external.extend(reply.opts.external)

        return notify


def _errno_of(err: SpiceError) -> int | None:
    """cr_errno criu would set for this failure (pycriu turns these into its messages)."""
    if hasattr(err, "errno") and isinstance(err.errno, int):
        return err.errno
    msg = err.message
    if msg.startswith("No process with pid") or "No such process" in msg:
        return errno.ESRCH
    if "already taken" in msg or "already exists" in msg:
        return errno.EEXIST
    return None


def _fail(resp: Any, e: BaseException) -> None:
    """Log the failure (if nothing logged it yet) and fill success/cr_errno/cr_errmsg."""
    if isinstance(e, SpiceError):
        err = e
    else:
        import traceback

        log.debug(traceback.format_exc())
        err = SpiceError("internal", f"{type(e).__name__}: {e}")
    log.error(err.where, err.message)
    resp.success = False
    code = _errno_of(err)
    if code is not None:
        resp.cr_errno = code
    if log.first_error:
        resp.cr_errmsg = log.first_error


def _begin(conn: Conn, req: Any, kind: str) -> Any:
    """Options for a dump/restore/check request, its log opened in the work dir."""
    from .rpc_opts import note_harmless, options_from_req

    ro = req.opts if req.HasField("opts") else rpc.criu_opts()

    def open_log(o: Any) -> None:
        if o.log_file or kind != "check":
            log.setup(o.verbosity, o.log_file, o.work_dir)
        else:
            log.level = o.verbosity
        log.info(f"RPC: {kind} request from pid {conn.peer}")

    r = options_from_req(kind, ro, conn.peer, conn.swrk, ready=open_log)
    note_harmless(ro, kind)
    r.o.notify = conn.notifier(r.o, bool(ro.notify_scripts))
    return r


def _finish(conn: Conn, resp: Any) -> int:
    sent = conn.send(resp)
    log.close()
    return 0 if resp.success and sent else 1


def handle_dump(conn: Conn, req: Any) -> int:
    resp = rpc.criu_resp(type=rpc.DUMP, success=False)
    resp.dump.restored = False
    try:
        r = _begin(conn, req, "dump")
        from .dump.run import dump

        dump(r.o)
        resp.success = True
    except Exception as e:  # noqa: BLE001 - every failure is an answer to the client
        _fail(resp, e)
    return _finish(conn, resp)


def handle_restore(conn: Conn, req: Any) -> int:
    resp = rpc.criu_resp(type=rpc.RESTORE, success=False)
    resp.restore.pid = -1
    exec_cmd: list[str] = []
    try:
        r = _begin(conn, req, "restore")
        exec_cmd = r.exec_cmd
        from .restore.run import restore

        restore(r.o)
        if conn.notified_pid is None:
            raise SpiceError("rpc", "the restore finished without reporting the restored root's pid")
        resp.restore.pid = conn.notified_pid
        resp.success = True
    except Exception as e:  # noqa: BLE001
        _fail(resp, e)
        if conn.notified_pid:
            resp.restore.pid = conn.notified_pid
    if resp.success and exec_cmd:
        conn.send(resp)
        _exec_after_restore(exec_cmd)
    return _finish(conn, resp)


def _exec_after_restore(cmd: list[str]) -> None:
    """criu's exec_cmd: after the reply, become the command, its stdout/stderr going to the log."""
    out = log.out
    try:
        fd = out.fileno()
    except (AttributeError, OSError, ValueError):
        fd = os.open("/dev/null", os.O_WRONLY)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    try:
        os.execvp(cmd[0], cmd)
    except OSError as e:
        log.error("rpc", f"Failed to exec cmd {cmd[0]}: {e.strerror}")
        log.close()
        os._exit(1)


def handle_check(conn: Conn, req: Any) -> int:
    import contextlib

    resp = rpc.criu_resp(type=rpc.CHECK, success=False)
    try:
        r = _begin(conn, req, "check")
        from .check import check

        with contextlib.redirect_stdout(log.out):
            resp.success = check(r.o) == 0
    except Exception as e:  # noqa: BLE001
        _fail(resp, e)
    return _finish(conn, resp)


def handle_version(conn: Conn, req: Any) -> int:
    resp = rpc.criu_resp(type=rpc.VERSION, success=True)
    major, minor, sub = CRIU_VERSION
    resp.version.major_number = major
    resp.version.minor_number = minor
    resp.version.sublevel = sub  # no gitid: clients round a gitid build up to the next minor
    return 0 if conn.send(resp) else 1


def handle_feature_check(conn: Conn, req: Any) -> int:
    from .rpc_fast import feature_answers

    resp = rpc.criu_resp(type=rpc.FEATURE_CHECK, success=True)
    asked = {n: bool(getattr(req.features, n)) for n in ("mem_track", "lazy_pages", "pidfd_store")}
    for name, value in feature_answers(asked).items():
        setattr(resp.features, name, value)
    return 0 if conn.send(resp) else 1


def handle_wait_pid(conn: Conn, req: Any) -> int:
    resp = rpc.criu_resp(type=rpc.WAIT_PID, success=False)
    try:
        _, status = os.waitpid(req.pid, 0)
        resp.status = status
        resp.success = True
    except OSError as e:
        log.error("rpc", f"Unable to wait {req.pid}: {e.strerror}")
        resp.cr_errno = e.errno
    conn.send(resp)
    return 0


def _refusal(rtype: int, message: str, code: int) -> Callable[[Conn, Any], int]:
    def handle(conn: Conn, req: Any) -> int:
        resp = rpc.criu_resp(type=rtype, success=False)
        log.error("rpc", message)
        resp.cr_errmsg = log.first_error or message
        conn.send(resp)
        return code

    return handle


_NO_PRE_DUMP = "pre-dump needs soft-dirty memory tracking, which spice does not have (dump without pre-dump)"
HANDLERS: dict[int, Callable[[Conn, Any], int]] = {
    rpc.DUMP: handle_dump,
    rpc.RESTORE: handle_restore,
    rpc.CHECK: handle_check,
    rpc.VERSION: handle_version,
    rpc.FEATURE_CHECK: handle_feature_check,
    rpc.WAIT_PID: handle_wait_pid,
    rpc.PRE_DUMP: _refusal(rpc.PRE_DUMP, _NO_PRE_DUMP, PROTOCOL_ERROR),
    rpc.SINGLE_PRE_DUMP: _refusal(rpc.SINGLE_PRE_DUMP, _NO_PRE_DUMP, PROTOCOL_ERROR),
    rpc.PAGE_SERVER: _refusal(rpc.PAGE_SERVER, "spice has no page server", 1),
    rpc.PAGE_SERVER_CHLD: _refusal(rpc.PAGE_SERVER_CHLD, "spice has no page server", 1),
    rpc.CPUINFO_DUMP: _refusal(rpc.CPUINFO_DUMP, "cpuinfo dump/check is not supported by spice", 1),
    rpc.CPUINFO_CHECK: _refusal(rpc.CPUINFO_CHECK, "cpuinfo dump/check is not supported by spice", 1),
}


def work(conn: Conn) -> int:
    """criu's cr_service_work: serve requests until one that does not keep the session open."""
    while True:
        log.first_error = None
        try:
            req = conn.recv()
        except SessionClosed as e:
            log.error("rpc", str(e))
            return PROTOCOL_ERROR
        name = REQ_NAMES.get(req.type, str(req.type))
        if req.keep_open and req.type not in KEEP_OPEN:
            log.error("rpc", f"keep_open is not allowed for {name} requests")
            return PROTOCOL_ERROR
        handler = HANDLERS.get(req.type)
        if handler is None:
            log.error("rpc", f"Invalid req {name}")
            conn.send(rpc.criu_resp(type=rpc.EMPTY, success=False))
            return PROTOCOL_ERROR
        rc = handler(conn, req)
        if rc or not req.keep_open:
            return rc


def serve_swrk(fd: int) -> int:
    """`criu swrk FD`: serve the client on the other end of the socketpair at FD."""
    guard_stdio()
    try:
        sk = socket.socket(fileno=fd)
    except OSError as e:
        print(f"Error (spice/rpc): swrk: fd {fd} is not a socket: {e.strerror}", file=sys.stderr)
        return 1
    if sk.family != socket.AF_UNIX or sk.type != socket.SOCK_SEQPACKET:
        print(f"Error (spice/rpc): swrk: fd {fd} is not a unix SOCK_SEQPACKET socket", file=sys.stderr)
        return 1
    try:
        return work(Conn(sk, swrk=True))
    finally:
        log.close()
