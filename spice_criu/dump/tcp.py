# SPDX-License-Identifier: MIT
"""Established and half-closed TCP connections (--tcp-established), read with TCP_REPAIR as CRIU
4.2 does.

Mirror of restore/tcp.py. Per connection: lock it (netlock.py), switch its socket (our pidfd_getfd
duplicate) into repair mode (silent: the kernel sends nothing, keepalive and retransmit timers are
off), then read what libsoccr reads, in its order: TCP_INFO (state, negotiated options, window
scales), the queue lengths (SIOCOUTQ, SIOCOUTQNSD: the never-sent part, SIOCINQ), the MSS clamp and
timestamp, the window (TCP_REPAIR_WINDOW), and per queue TCP_QUEUE_SEQ and its bytes, peeked
(MSG_PEEK) so the socket keeps them. That is a tcp_stream_entry plus the in-queue then out-queue
bytes in tcp-stream-<ino hex>.img. A half-closed connection (FIN_WAIT1/2, CLOSE_WAIT, LAST_ACK,
CLOSING) is read the same way, as libsoccr does: our FIN, counted by SIOCOUTQ (and SIOCOUTQNSD
while unsent), is not a byte of the image's queues; the sequence numbers keep counting both FINs
(restore/tcp.py replays them); its state goes to inet_sk_entry.state, taken from TCP_INFO here.

Where spice differs from CRIU: under a lock, a socket is in repair mode only while it is read (the
lock drops whatever the kernel sends meanwhile, the tree is frozen, so the image stays exact),
because a task finding its socket in repair mode gets EPERM from recv() -- which is what happens if
spice dies and the kernel lets the tree go. After a dump that kills the tree (closing a socket in
repair mode sends nothing: the peer never learns) and after --leave-stopped, release() puts every
socket back into repair mode and leaves the lock, as CRIU leaves them; with --leave-running or on
any failure it leaves repair mode (SO_REUSEADDR back to its dumped value: the kernel resets it)
and removes the lock, so the connections carry on.

And if spice itself dies (SIGKILL): from the first connection on, a guard process holds a
duplicate of every socket spice repairs and the lock's description, and puts everything back the
moment spice's end of their socketpair closes without a "done". CRIU has no such guard.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import struct
from typing import Any

from ..errors import SpiceError
from ..images import codec
from ..log import log
from ..tcpstates import CONNECTED, FIN_SENT
from ..tcpstates import name as state_name
from .netlock import Conn, NetworkLock

TCP_REPAIR, TCP_REPAIR_QUEUE, TCP_QUEUE_SEQ, TCP_TIMESTAMP, TCP_REPAIR_WINDOW = 19, 20, 21, 24, 29
TCP_RECV_QUEUE, TCP_SEND_QUEUE = 1, 2
TCPI_OPT_TIMESTAMPS, TCPI_OPT_WSCALE = 1, 4
SIOCINQ, SIOCOUTQ, SIOCOUTQNSD = 0x541B, 0x5411, 0x894B


class Repaired:
    """A socket spice switched into repair mode: our fd on it, whether it is in repair mode now, and
    what to put back."""

    __slots__ = ("fd", "reuseaddr", "what", "in_repair")

    def __init__(self, fd: int, reuseaddr: bool, what: str) -> None:
        self.fd, self.reuseaddr, self.what, self.in_repair = fd, reuseaddr, what, False

    def repair(self, on: bool) -> None:
        """Repair mode on or off; off puts SO_REUSEADDR back (the kernel resets it)."""
        _setopt(self.fd, TCP_REPAIR, int(on))
        self.in_repair = on
        if not on:
            _setopt(self.fd, socket.SO_REUSEADDR, int(self.reuseaddr), socket.SOL_SOCKET)


class TcpDump:
    """The connections of one dump: the network lock and the sockets spice repaired."""

    def __init__(self, lock: NetworkLock) -> None:
        self.lock = lock
        self.repaired: list[Repaired] = []
        self.guard: _Guard | None = None
        self.netns: Any = None  # the lock of the tree's own net namespace (netns.NetnsLock), once taken

    def netns_lock(self, pid: int) -> None:
        """Lock the tree's own net namespace (entered through pid) as criu does, once: every packet
        not marked 0xC114 dropped there. Its connections need no rule of their own then."""
        if self.netns is not None or self.lock.method == "skip":
            return
        from .netns import NetnsLock

        self.netns = NetnsLock(pid, self.lock.method, self.lock.table)
        if self.guard is None:
            self.guard = _Guard(self.lock)
        self.guard.send({"netns": self.lock.method}, self.netns.fd)  # before the lock: the guard removes it
        self.netns.lock()
        if self.lock.table_made:  # the host's table (made at the freeze) keeps nothing of this tree's
            self.lock.unlock()

    def dump(self, ctx: Any, lfd: int, e: Any, what: str) -> None:
        """Lock connection e (an inet_sk_entry already filled, options included), take its state
        and queues, and add tcp-stream-<ino>.img.

        With a lock in place the socket leaves repair mode again right after the snapshot (the lock
        keeps whatever the kernel still sends from the peer; the tree is frozen): if spice then
        dies, the tree finds a working socket, and the guard only has to remove the lock. CRIU keeps
        it in repair mode until the end; spice puts it back into repair mode before a kill, so the
        close stays silent (release). With --network-lock skip it stays in repair mode, as CRIU."""
        from .run import fault

        args = (e.family, list(e.src_addr), e.src_port, list(e.dst_addr), e.dst_port)
        conn = Conn(*args)
        own_ns = ctx.ids.own_ns("net")
        if own_ns is not None:  # inside the tree's net namespace: the whole namespace is locked
            self.netns_lock(own_ns[1])
        if self.guard is None:
            self.guard = _Guard(self.lock)
        if own_ns is None:
            self.guard.send({"conn": args})  # before the lock, so the guard removes it whatever happens
            self.lock.lock(conn)
        r = Repaired(os.dup(lfd), bool(e.opts.reuseaddr), what)
        self.repaired.append(r)
        self.guard.send({"sk": r.reuseaddr}, r.fd)
        try:
            r.repair(True)
            log.info(f"\tTurned repair on for socket {e.ino:x} ({conn})")
            state, entry, inq, outq = snapshot(r.fd)
            if self.lock.method != "skip":
                r.repair(False)
        except OSError as err:
            raise SpiceError("dump", f"{what}: reading the connection in repair mode: {err.strerror or err}") from None
        fault("tcp-locked")
        e.state = state  # criu too: the state libsoccr read in repair mode, not sock_diag's of before
        ctx.images.add(f"tcp-stream-{e.ino:x}.img", "TCP_STREAM", entry, (inq, outq))
        log.info(f"\t{state_name(state)}: inq {entry.inq_len} bytes seq {entry.inq_seq}, outq {entry.outq_len} bytes "
                 f"({entry.unsq_len} unsent) seq {entry.outq_seq}, mss_clamp {entry.mss_clamp}")

    def release(self, unlock: bool) -> None:
        """unlock: repair mode off and the lock removed, in CRIU's order (the connections carry on);
        else every socket in repair mode and the lock in place, for the restore (a killed socket
        closes silently). Either way our fds are closed and the guard dismissed."""
        for r in self.repaired:
            try:
                if r.in_repair != (not unlock):
                    r.repair(not unlock)
            except OSError as err:
                log.error("dump", f"{r.what}: switching repair mode {'off' if unlock else 'on'}: {err.strerror}")
            os.close(r.fd)
        self.repaired.clear()
        if unlock:
            self.lock.unlock()
        if self.netns is not None:
            if unlock:
                self.netns.unlock()
            self.netns.close()
            self.netns = None
        if self.guard is not None:
            self.guard.done()
            self.guard = None


def _setopt(fd: int, opt: int, value: int, level: int = socket.IPPROTO_TCP) -> None:
    with socket.socket(fileno=os.dup(fd)) as s:
        s.setsockopt(level, opt, value)


def _ioctl_int(fd: int, req: int) -> int:
    return struct.unpack("i", fcntl.ioctl(fd, req, bytes(4)))[0]


def _queue(s: socket.socket, queue: int, length: int) -> tuple[int, bytes]:
    """A queue's sequence number and its bytes, peeked in repair mode (one byte more is asked for,
    to be sure the queue holds exactly `length`)."""
    s.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_QUEUE, queue)
    seq = struct.unpack("I", s.getsockopt(socket.IPPROTO_TCP, TCP_QUEUE_SEQ, 4))[0]
    if not length:
        return seq, b""
    data = s.recv(length + 1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    if len(data) != length:
        name = "receive" if queue == TCP_RECV_QUEUE else "send"
        raise OSError(0, f"the {name} queue holds {len(data)} bytes, expected {length}")
    return seq, data


def snapshot(fd: int) -> tuple[int, Any, bytes, bytes]:
    """(TCP state, tcp_stream_entry, in-queue, out-queue) of a socket in repair mode (libsoccr_save's
    reads)."""
    with socket.socket(fileno=os.dup(fd)) as s:
        info = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
        state, options, wscales = info[0], info[5], info[6]
        if state not in CONNECTED:
            raise OSError(0, f"state {state_name(state)} in repair mode (the connection moved on)")
        outq, unsq = _ioctl_int(fd, SIOCOUTQ), _ioctl_int(fd, SIOCOUTQNSD)
        if state in FIN_SENT:  # our FIN: a sequence number, no byte of the queue
            outq, unsq = max(outq - 1, 0), max(unsq - 1, 0)
        inq = _ioctl_int(fd, SIOCINQ)
        t = codec.pb("tcp_stream_entry", lite=True)(inq_len=inq, outq_len=outq, unsq_len=unsq, opt_mask=options,
                                         snd_wscale=0, mss_clamp=s.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG))
        if options & TCPI_OPT_WSCALE:
            t.snd_wscale, t.rcv_wscale = wscales & 0xF, wscales >> 4
        if options & TCPI_OPT_TIMESTAMPS:
            t.timestamp = struct.unpack("I", s.getsockopt(socket.IPPROTO_TCP, TCP_TIMESTAMP, 4))[0]
        try:
            w = struct.unpack("5I", s.getsockopt(socket.IPPROTO_TCP, TCP_REPAIR_WINDOW, 20))
        except OSError as err:
            if err.errno != 92:  # ENOPROTOOPT: a kernel before 4.8
                raise
        else:
            t.snd_wl1, t.snd_wnd, t.max_window, t.rcv_wnd, t.rcv_wup = w
        t.inq_seq, in_data = _queue(s, TCP_RECV_QUEUE, inq)
        t.outq_seq, out_data = _queue(s, TCP_SEND_QUEUE, outq)
    # TCP_NODELAY / TCP_CORK: CRIU 4.2 records them in the inet_sk_entry's tcp_opts only (sockets.py),
    # no longer in tcp_stream_entry (its nodelay/cork fields stay unset)
    return state, t, in_data, out_data


class _Guard:
    """A child process that unlocks everything if spice dies before saying done (see the top)."""

    def __init__(self, lock: NetworkLock) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            code = 0
            try:
                parent.close()
                _guard_main(child, lock.method, lock.table)
            except BaseException:  # noqa: BLE001 - the guard must end quietly
                code = 1
            finally:
                os._exit(code)
        child.close()
        self.sock, self.pid = parent, pid
        log.debug(f"tcp guard process {pid}")

    def send(self, msg: dict, fd: int | None = None) -> None:
        data = json.dumps(msg).encode()
        if fd is None:
            self.sock.send(data)
        else:
            socket.send_fds(self.sock, [data], [fd])

    def done(self) -> None:
        """spice took care of everything: the guard drops its references and exits."""
        try:
            self.sock.send(b'{"done": true}')
        except OSError:
            pass
        self.sock.close()
        os.waitpid(self.pid, 0)


def _guard_main(sock: socket.socket, method: str, table: str) -> None:
    """The guard: collect the connections and sockets; at EOF without "done", put them back."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # it ends with spice, not before
        signal.signal(sig, signal.SIG_IGN)
    lock = NetworkLock(method, "")
    lock.table = table
    fds: list[tuple[int, bool]] = []
    netns_fd, netns_method = -1, ""  # the tree's own net namespace, locked whole
    while True:
        data, fdlist, _flags, _addr = socket.recv_fds(sock, 4096, 4)
        if not data:
            break
        msg = json.loads(data)
        if msg.get("done"):
            return
        if "conn" in msg:
            if method == "iptables":
                lock.locked.append(Conn(*msg["conn"]))
            lock.table_made = method == "nftables"
        if fdlist and msg.get("netns"):
            netns_fd, netns_method = fdlist[0], msg["netns"]
        elif fdlist:
            fds.append((fdlist[0], bool(msg.get("sk"))))
    log.warn("dump", "spice died with TCP connections locked: the guard unlocks them")
    for fd, reuse in fds:
        try:
            _setopt(fd, TCP_REPAIR, 0)
            _setopt(fd, socket.SO_REUSEADDR, int(reuse), socket.SOL_SOCKET)
        except OSError:
            pass
    lock.unlock()
    if netns_fd >= 0:
        from .netns import ns_unlock

        try:
            ns_unlock(netns_fd, netns_method, table)
        except Exception:  # noqa: BLE001 - the guard must end quietly
            pass
