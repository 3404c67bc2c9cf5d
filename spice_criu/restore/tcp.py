# SPDX-License-Identifier: MIT
"""Established and half-closed TCP connections (--tcp-established), rebuilt with TCP_REPAIR as
CRIU 4.2 (libsoccr) does.

Per connection (inet_sk_entry + tcp-stream-<ino>.img): a socket in repair mode gets both queue
sequence numbers (rcv_nxt - inq_len, write_seq - outq_len), is bound and "connected" without a
handshake, gets the negotiated options (SACK, window scales, timestamps, MSS clamp) and the
timestamp offset, its receive queue and the sent-but-unacknowledged part of its send queue written
in repair mode, then the never-sent tail written normally, then the window state
(TCP_REPAIR_WINDOW), TCP_NODELAY/TCP_CORK, file flags and socket options.

Like CRIU, the sockets stay in repair mode (silent: no packets) until every task is complete; then
the network lock the dump left (nftables table ``inet CRIU-<dump run id>``, or iptables DROP rules)
is removed and repair mode is switched off (which sends a window probe), SO_REUSEADDR back to its
dumped value, just before the tasks resume. A failed restore leaves the lock in place, as CRIU does.

A half-closed connection (FIN_WAIT1/2, CLOSE_WAIT, LAST_ACK, CLOSING: inet_sk_entry.state) has its
FINs replayed, as libsoccr does, on the queues rebuilt without them (each FIN takes a sequence
number: the queue sequences of the image are one past the data): our FIN by shutdown(SHUT_WR) in
repair mode (FIN_WAIT2: in the send repair queue, as already sent), the peer's FIN by a FIN|ACK
segment forged from the peer's address (raw socket, marked 0xC114 to pass the dump's lock), and
the peer's acknowledgement of our FIN (FIN_WAIT2) by a forged ACK. The socket ends in the dumped
state with the dumped sequence numbers. Other states (SYN_SENT...) are refused up front.

With --tcp-close (CRIU's option, required when the dump was made with it) no connection is rebuilt:
each becomes a fresh socket of its kind, unbound, unconnected and shut down, with its file flags
and options, as CRIU restores it; the lock of a --tcp-established dump is still removed.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import struct
import subprocess
import time

from ..errors import ImageError, SpiceError
from ..images.imagedir import ImageDir
from ..log import log
from ..netfilter import NFPROTO_INET, SOCCR_MARK, iptables_rule, nft_delete_table, nft_lock_table
from ..tcpstates import (
    CLOSING,
    CONNECTED,
    ESTABLISHED,
    FIN_RECEIVED,
    FIN_SENT,
    FIN_SENT_ACKED,
    FIN_WAIT1,
    FIN_WAIT2,
    LAST_ACK,
)
from ..tcpstates import name as state_name
from .eventfds import with_file_params
from .files import FileObj, OpenContext, refuse

TYPE_CHECKING = False  # typing costs ~10 ms of start-up; annotations are strings
if TYPE_CHECKING:
    from typing import Any, ClassVar

TCP_REPAIR, TCP_REPAIR_QUEUE, TCP_QUEUE_SEQ, TCP_REPAIR_OPTIONS = 19, 20, 21, 22
TCP_TIMESTAMP, TCP_REPAIR_WINDOW = 24, 29
TCP_NO_QUEUE, TCP_RECV_QUEUE, TCP_SEND_QUEUE = 0, 1, 2
TCPOPT_MAXSEG, TCPOPT_WINDOW, TCPOPT_SACK_PERM, TCPOPT_TIMESTAMP = 2, 3, 4, 8
TCPI_OPT_TIMESTAMPS, TCPI_OPT_SACK, TCPI_OPT_WSCALE = 1, 2, 4
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33
TH_FIN, TH_ACK = 0x01, 0x10
NETWORK_LOCK = {0: "iptables", 1: "nftables", 2: "skip"}


def _addr(family: int, words) -> str:
    raw = struct.pack(f"<{len(words)}I", *words)
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    return socket.inet_ntop(socket.AF_INET6, raw.ljust(16, b"\0")[:16])


class TcpConn(FileObj):
    e: Any = None  # inet_sk_entry
    stream: Any = None  # tcp_stream_entry; None: dumped with --tcp-close, nothing of it saved
    inq: bytes = b""
    outq: bytes = b""
    kind: ClassVar[str] = "TCP connection"

    def describe(self) -> str:
        e = self.e
        return (f"TCP connection socket:[{e.ino}] {_addr(e.family, e.src_addr)}:{e.src_port} -> "
                f"{_addr(e.family, e.dst_addr)}:{e.dst_port} (file id {self.id})")

    def open(self, ctx: OpenContext) -> int:
        # restored closed without its state (run.py insists on --tcp-close for such a dump), or by choice
        closed = self.stream is None or ctx.option("tcp_close")
        if not closed and not ctx.option("tcp_established"):
            raise SpiceError("sockets", f"{self.describe()}: connected TCP socket in image: restore with "
                             "--tcp-established or --tcp-close")
        e = self.e
        s = socket.socket(e.family, e.type, e.proto)
        try:
            if closed:
                self._shut(s)
            else:
                self._rebuild(s)
            fd = s.detach()
        except OSError as err:
            s.close()
            raise SpiceError("sockets", f"{self.describe()}: {err.strerror or err}") from None
        fd = with_file_params(fd, self.flags, e.fown, self.describe())
        if not closed:
            _finisher(ctx).add(fd, bool(e.opts.reuseaddr), self)
        else:
            log.info(f"{self.describe()}: restored closed (--tcp-close)")
            if self.stream is not None:  # dumped with its state, under the dump's network lock
                _finisher(ctx).unlock.append(self)
        return fd

    def _rebuild(self, s: socket.socket) -> None:
        e, t = self.e, self.stream
        state = e.state
        # the image's sequences count the FINs; the queues are rebuilt without them, which replay() adds
        inq_seq = t.inq_seq - (state in FIN_RECEIVED)
        outq_seq = t.outq_seq - (state in FIN_SENT)
        # several sockets may share a port (accepted ones and their listener): CRIU sets
        # SO_REUSEADDR on them all and puts the dumped value back at the end; repair mode (set after
        # it, which would otherwise reset it) binds a busy port regardless (SK_FORCE_REUSE)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, 1)
        if e.family == socket.AF_INET6 and e.HasField("v6only"):
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(e.v6only))
        _queue_seq(s, TCP_RECV_QUEUE, inq_seq - t.inq_len)
        _queue_seq(s, TCP_SEND_QUEUE, outq_seq - t.outq_len)
        s.bind((_addr(e.family, e.src_addr), e.src_port))
        s.connect((_addr(e.family, e.dst_addr), e.dst_port))  # repair mode: no handshake
        opts = []
        if t.opt_mask & TCPI_OPT_SACK:
            opts.append((TCPOPT_SACK_PERM, 0))
        if t.opt_mask & TCPI_OPT_WSCALE:
            opts.append((TCPOPT_WINDOW, t.snd_wscale + (t.rcv_wscale << 16)))
        if t.opt_mask & TCPI_OPT_TIMESTAMPS:
            opts.append((TCPOPT_TIMESTAMP, 0))
        opts.append((TCPOPT_MAXSEG, t.mss_clamp))
        s.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_OPTIONS, b"".join(struct.pack("II", c, v) for c, v in opts))
        if t.opt_mask & TCPI_OPT_TIMESTAMPS and t.HasField("timestamp"):
            s.setsockopt(socket.IPPROTO_TCP, TCP_TIMESTAMP, struct.pack("I", t.timestamp))
        # CRIU's restore_prepare_socket: room for the queues, and never block while filling them
        s.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, 0x7FFFFFFF // 2)
        s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 0x7FFFFFFF // 2)
        s.setblocking(False)
        if t.inq_len:
            s.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_RECV_QUEUE)
            _send_all(s, self.inq)
        unsent = t.unsq_len if t.HasField("unsq_len") else 0
        sent = t.outq_len - unsent
        if sent:
            s.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)
            _send_all(s, self.outq[:sent])
        if unsent:  # never left this host: queued the ordinary way
            s.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, 0)
            _send_all(s, self.outq[sent:])
            s.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, 1)
        if t.HasField("snd_wnd"):
            # the peer's FIN is not in yet: the window must not start past rcv_nxt (EINVAL)
            fin = state in FIN_RECEIVED
            s.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_WINDOW,
                         struct.pack("5I", t.snd_wl1, t.snd_wnd, t.max_window, t.rcv_wnd + fin,
                                     (t.rcv_wup - fin) & 0xFFFFFFFF))
        if state != ESTABLISHED:
            self._replay_fins(s, inq_seq, outq_seq)
        _socket_opts(s, e, t, self.describe())

    def _replay_fins(self, s: socket.socket, inq_seq: int, outq_seq: int) -> None:
        """libsoccr_restore's order: our FIN first when we sent it first, then the peer's, then ours
        when we answered theirs (LAST_ACK); then the peer's acknowledgement of ours (FIN_WAIT2)."""
        e, t = self.e, self.stream
        state = e.state
        if state in (FIN_WAIT1, FIN_WAIT2, CLOSING):
            _shutdown_in_repair(s, state in FIN_SENT_ACKED)
        if state in FIN_RECEIVED:
            _forge(e, inq_seq, outq_seq - t.outq_len, TH_ACK | TH_FIN, t.rcv_wnd)
        if state == LAST_ACK:
            _shutdown_in_repair(s, False)
        if state in FIN_SENT_ACKED:
            _forge(e, inq_seq, outq_seq + 1 - t.outq_len, TH_ACK, t.rcv_wnd)
        # the forged segments go through loopback: normally handled before sendto() returns
        deadline = time.monotonic() + 2.0
        while (got := s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]) != state:
            if time.monotonic() > deadline:
                raise OSError(0, f"replaying the FINs left state {state_name(got)}, not {state_name(state)}")
            time.sleep(0.001)


    def _shut(self, s: socket.socket) -> None:
        """--tcp-close (CRIU's restore_one_tcp with tcp_close): the connection is not rebuilt; the
        task gets a fresh socket of the same kind, never bound or connected, shut down both ways
        (reads see end of file at once, like CRIU's), with the dumped options."""
        e = self.e
        if e.family == socket.AF_INET6 and e.HasField("v6only"):
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(e.v6only))
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError as err:
            if err.errno != errno.ENOTCONN:  # what an unconnected socket answers; shut down anyway
                raise
        _socket_opts(s, e, None, self.describe())


def _socket_opts(s: socket.socket, e: Any, t: Any, what: str) -> None:
    """TCP_NODELAY/TCP_CORK, the socket's own options (buffer sizes included: after the queues, as
    CRIU), keepalive and IP options of inet_sk_entry e (t: its tcp_stream_entry, or None)."""
    from .sockets import _apply_opts

    # CRIU 4.2 keeps nodelay/cork in the socket's tcp_opts, older ones in the stream
    topts = e.tcp_opts if e.HasField("tcp_opts") else None
    if (t is not None and t.nodelay) or (topts is not None and topts.nodelay):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if (t is not None and t.cork) or (topts is not None and topts.cork):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
    _apply_opts(s, e.opts, what)
    if topts is not None:
        for opt, v in ((socket.TCP_KEEPCNT, topts.keepcnt), (socket.TCP_KEEPIDLE, topts.keepidle),
                       (socket.TCP_KEEPINTVL, topts.keepintvl)):
            if v:
                s.setsockopt(socket.IPPROTO_TCP, opt, v)
    if e.HasField("ip_opts") and e.ip_opts.HasField("tos") and e.ip_opts.tos:
        s.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, e.ip_opts.tos)


def _shutdown_in_repair(s: socket.socket, acked: bool) -> None:
    """Our FIN, in repair mode; acked: put in the send repair queue, as a segment already sent."""
    if acked:
        s.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)
    s.shutdown(socket.SHUT_WR)
    if acked:
        s.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_NO_QUEUE)


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _forge(e: Any, seq: int, ack: int, flags: int, window: int) -> None:
    """Send the restored socket a segment from its peer (what libsoccr's send_fin does with libnet):
    a bare TCP header with seq/ack/flags and, as libsoccr, the socket's own receive window (cut to
    16 bits) as the peer's window; marked with SOCCR_MARK so the dump's network lock lets it by."""
    family = e.family
    peer, me = _addr(family, e.dst_addr), _addr(family, e.src_addr)
    if family == socket.AF_INET6 and peer.startswith("::ffff:") and "." in peer:
        family, peer, me = socket.AF_INET, peer[7:], me[7:]  # IPv4-mapped: TCP over IPv4
    src, dst = socket.inet_pton(family, peer), socket.inet_pton(family, me)
    tcp = struct.pack("!HHIIBBHHH", e.dst_port, e.src_port, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 5 << 4, flags,
                      window & 0xFFFF, 0, 0)
    if family == socket.AF_INET:
        pseudo = src + dst + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(tcp))
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 242, 0, 64, socket.IPPROTO_TCP, 0, src, dst)
    else:
        pseudo = src + dst + struct.pack("!I3xB", len(tcp), socket.IPPROTO_TCP)
        ip = struct.pack("!IHBB16s16s", 6 << 28, len(tcp), socket.IPPROTO_TCP, 64, src, dst)
    tcp = tcp[:16] + struct.pack("!H", _csum(pseudo + tcp)) + tcp[18:]
    with socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_RAW) as raw:  # IPPROTO_RAW: we write the IP header
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, SOCCR_MARK)
        raw.sendto(ip + tcp, (me, 0))


def _queue_seq(s: socket.socket, queue: int, seq: int) -> None:
    s.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_QUEUE, queue)
    s.setsockopt(socket.IPPROTO_TCP, TCP_QUEUE_SEQ, struct.pack("I", seq & 0xFFFFFFFF))


def _send_all(s: socket.socket, data: bytes) -> None:
    """Queue data; in repair mode the kernel wants linear skbs, so halve the chunk on ENOMEM."""
    chunk = max(len(data), 1)
    off = 0
    while off < len(data):
        try:
            n = s.send(data[off : off + chunk])
        except OSError as err:
            if chunk > 1024:
                chunk //= 2
                continue
            raise OSError(err.errno, f"queueing {len(data) - off} of {len(data)} bytes: {err.strerror}") from None
        off += n


class _Finisher:
    """Runs once every task is complete: unlock the network, take the sockets out of repair mode."""

    def __init__(self, ctx: OpenContext) -> None:
        self.ctx = ctx
        self.socks: list[tuple[int, bool, TcpConn]] = []
        self.unlock: list[TcpConn] = []  # dumped with their state, restored closed: only unlocked

    def add(self, fd: int, reuseaddr: bool, conn: TcpConn) -> None:
        self.socks.append((os.dup(fd), reuseaddr, conn))

    def __call__(self) -> None:
        network_unlock(self.ctx.imgdir, [c for _, _, c in self.socks] + self.unlock)
        for fd, reuse, conn in self.socks:
            s = socket.socket(fileno=os.dup(fd))
            try:
                s.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, 0)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, int(reuse))
            except OSError as err:
                log.error("sockets", f"{conn.describe()}: leaving repair mode: {err.strerror}")
            finally:
                s.close()

    def close(self) -> None:
        """Always (success or failure): drop our references; a failed restore keeps the lock."""
        for fd, _, _ in self.socks:
            os.close(fd)
        self.socks.clear()


def _finisher(ctx: OpenContext) -> _Finisher:
    cache = ctx.kind_cache("tcp")
    if "finisher" not in cache:
        cache["finisher"] = f = _Finisher(ctx)
        ctx.when_complete(f)
        ctx.cleanup.append(f.close)
    return cache["finisher"]


# ---------------------------------------------------------------- the network lock of the dump


def network_unlock(imgdir: ImageDir, conns: list[TcpConn]) -> None:
    """Remove what `criu dump --tcp-established` left to keep the connections' packets away."""
    inv = imgdir.one("inventory.img")
    method = inv.network_lock_method if inv.HasField("network_lock_method") else 0
    if _own_netns(imgdir, inv):
        return  # the tree's own namespace was locked whole: restore/netns.py removes that lock
    if method == 1:
        if not inv.dump_criu_run_id:
            log.warn("sockets", "nftables network lock without a dump run id: nothing to unlock")
            return
        table = nft_lock_table(inv.dump_criu_run_id)
        try:
            nft_delete_table(NFPROTO_INET, table)
        except OSError as err:
            log.warn("sockets", f"can't remove the dump's nftables lock (table inet {table}): {err.strerror}")
    elif method == 0:
        for c in conns:
            _iptables_unlock(c)


def _own_netns(imgdir: ImageDir, inv: Any) -> bool:
    """Whether the tree lives in a net namespace of its own (its root's ids differ from the dumper's)."""
    from .namespaces import own

    root = imgdir.entries("pstree.img")[:1]
    ids = imgdir.one(f"ids-{root[0].pid}.img", optional=True) if root else None
    return ids is not None and "net" in own(ids, inv)


def _iptables_unlock(c: TcpConn) -> None:
    """CRIU's iptables lock: a DROP rule per direction of each connection."""
    e = c.e
    tool = shutil.which("iptables" if e.family == socket.AF_INET else "ip6tables")
    if tool is None:
        log.warn("sockets", f"{c.describe()}: no iptables to remove the dump's network lock with")
        return
    src, dst = _addr(e.family, e.src_addr), _addr(e.family, e.dst_addr)
    for chain, (a, ap, b, bp) in (("INPUT", (dst, e.dst_port, src, e.src_port)),
                                  ("OUTPUT", (src, e.src_port, dst, e.dst_port))):
        cmd = iptables_rule(tool, "-D", chain, a, ap, b, bp)
        r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if r.returncode:
            log.warn("sockets", f"{' '.join(cmd)}: {r.stderr.strip()}")


# ---------------------------------------------------------------- planning


def plan_established(sk: Any, imgdir: ImageDir) -> FileObj:
    """The FileObj for a connected TCP socket of files.img (called by sockets.py's INETSK planner)."""
    obj = TcpConn(sk.id, sk.flags, e=sk)
    if imgdir.one("inventory.img").tcp_close:  # dumped with --tcp-close: nothing of it was saved
        return obj
    if sk.state not in CONNECTED:
        return refuse(obj, f"state {state_name(sk.state)} (only established and half-closed connections are "
                      "restored)")
    name = f"tcp-stream-{sk.ino:x}.img"
    if not imgdir.exists(name):
        raise ImageError(imgdir / name, f"missing: {obj.describe()} needs it")
    img = imgdir.load(name)
    if len(img.entries) != 1:
        raise ImageError(imgdir / name, f"{len(img.entries)} entries, expected 1")
    ent = img.entries[0]
    obj.stream = ent.msg
    obj.inq, obj.outq = ent.extra or (b"", b"")
    t = obj.stream
    if t.HasField("unsq_len") and t.unsq_len > t.outq_len:
        raise ImageError(imgdir / name, f"unsent length {t.unsq_len} exceeds the send queue ({t.outq_len})")
    return obj
