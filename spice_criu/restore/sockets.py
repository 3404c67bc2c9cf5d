# SPDX-License-Identifier: MIT
"""Sockets: TCP/UDP/raw (unconnected, bound, listening), unix socket pairs / listeners /
sockets bound to paths, netlink and packet sockets, with their options and, for unix sockets, the
packets still queued (sk-queues.img).

Established TCP connections (TCP_REPAIR, --tcp-established) are planned by tcp.py.
"""

from __future__ import annotations

import _socket as socket  # the C module: `socket` imports selectors, enum, array... (~5 ms of start-up)
import os
import stat
import struct

from ..errors import SpiceError
from ..images.imagedir import ImageDir
from ..record import Factory
from .eventfds import with_file_params
from .files import FileObj, OpenContext, planner, refuse

TYPE_CHECKING = False  # typing costs ~10 ms of start-up; annotations are strings
if TYPE_CHECKING:
    from typing import Any, ClassVar

TCP_ESTABLISHED, TCP_CLOSE, TCP_LISTEN = 1, 7, 10
SHUT_BITS = {1: socket.SHUT_RD, 2: socket.SHUT_WR, 3: socket.SHUT_RDWR}
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33
SOCK_BUF_LOCK_MASK = 3


SOL_RAW, ICMP_FILTER, IP_NODEFRAG, ICMP6_FILTER, IPV6_HDRINCL = 255, 1, 22, 1, 36
SOL_PACKET, PACKET_ADD_MEMBERSHIP, PACKET_COPY_THRESH, PACKET_AUXDATA, PACKET_ORIGDEV = 263, 1, 7, 8, 9
PACKET_VERSION, PACKET_RESERVE, PACKET_LOSS, PACKET_VNET_HDR, PACKET_TIMESTAMP, PACKET_FANOUT = 10, 12, 14, 15, 17, 18


def _apply_opts(s: socket.socket, o, what: str) -> None:
    """Socket-level options of sk_opts_entry (buffer sizes only when the owner had pinned them)."""
    try:
        if o.reuseaddr:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if o.so_reuseport:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if o.so_buf_lock & SOCK_BUF_LOCK_MASK:
            # the kernel doubles what it is given: hand back half of what was read
            s.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, o.so_sndbuf // 2)
            s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, o.so_rcvbuf // 2)
        if o.so_priority:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_PRIORITY, o.so_priority)
        if o.so_rcvlowat > 1:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, o.so_rcvlowat)
        if o.so_mark:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, o.so_mark)
        if o.so_passcred:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        if o.so_broadcast:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        if o.so_keepalive:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if o.so_oobinline:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_OOBINLINE, 1)
        if o.so_dontroute:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_DONTROUTE, 1)
        if o.so_linger:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, o.so_linger))
        for sec, usec, opt in ((o.so_snd_tmo_sec, o.so_snd_tmo_usec, socket.SO_SNDTIMEO),
                               (o.so_rcv_tmo_sec, o.so_rcv_tmo_usec, socket.SO_RCVTIMEO)):
            if sec or usec:
                s.setsockopt(socket.SOL_SOCKET, opt, struct.pack("qq", sec, usec))
    except OSError as e:
        raise SpiceError("sockets", f"{what}: restoring socket options: {e.strerror}") from None


def _addr(family: int, words) -> str:
    raw = struct.pack(f"<{len(words)}I", *words)
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[:4] if raw else b"\0" * 4)
    return socket.inet_ntop(socket.AF_INET6, raw.ljust(16, b"\0")[:16])


class InetSocket(FileObj):
    e: Any = None
    kind: ClassVar[str] = "inet socket"

    def describe(self) -> str:
        e = self.e
        proto = {socket.IPPROTO_TCP: "TCP", socket.IPPROTO_UDP: "UDP"}.get(e.proto, f"protocol {e.proto}")
        if e.type == socket.SOCK_RAW:
            proto = f"raw IP ({proto})"
        return f"{proto} socket:[{e.ino}] port {e.src_port} (file id {self.id})"

    def open(self, ctx: OpenContext) -> int:
        e = self.e
        key = f"socket:[{e.ino}]"
        if key in ctx.inherit:
            return os.dup(ctx.inherit[key])
        s = socket.socket(e.family, e.type, e.proto)
        try:
            # only when it differs: a raw socket (its "port" is set) refuses any change (EINVAL)
            if e.family == socket.AF_INET6 and e.HasField("v6only") and \
                    bool(s.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)) != e.v6only:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(e.v6only))
            _apply_opts(s, e.opts, self.describe())
            if e.HasField("ip_opts"):
                ip = e.ip_opts
                if ip.freebind:
                    s.setsockopt(socket.SOL_IP, 15, 1)  # IP_FREEBIND
                if ip.HasField("tos") and ip.tos:
                    s.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, ip.tos)
                if ip.HasField("ttl") and ip.ttl != 64 and e.family == socket.AF_INET:
                    s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ip.ttl)
                if ip.HasField("raw"):
                    _raw_opts(s, ip.raw)
            if e.proto == socket.IPPROTO_TCP and e.HasField("tcp_opts"):
                t = e.tcp_opts
                for opt, v in ((socket.TCP_KEEPCNT, t.keepcnt), (socket.TCP_KEEPIDLE, t.keepidle),
                               (socket.TCP_KEEPINTVL, t.keepintvl)):
                    if v:
                        s.setsockopt(socket.IPPROTO_TCP, opt, v)
                if t.nodelay:
                    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if e.type == socket.SOCK_RAW:  # its "port" is its protocol: bound only to an address
                if any(e.src_addr):
                    s.bind((_addr(e.family, e.src_addr), 0))
            elif e.src_port or any(e.src_addr):
                s.bind((_addr(e.family, e.src_addr), e.src_port))
            if e.state == TCP_LISTEN:
                s.listen(e.backlog)
            elif e.proto == socket.IPPROTO_UDP and e.state == TCP_ESTABLISHED:
                s.connect((_addr(e.family, e.dst_addr), e.dst_port))
            fd = s.detach()
        except OSError as err:
            s.close()
            raise SpiceError("sockets", f"{self.describe()}: {err.strerror}") from None
        return with_file_params(fd, self.flags, self.e.fown, self.describe())


def _raw_opts(s: socket.socket, r) -> None:
    if s.family == socket.AF_INET6:
        if r.hdrincl:
            s.setsockopt(socket.IPPROTO_IPV6, IPV6_HDRINCL, 1)
        if len(r.icmpv_filter) == 8 and s.proto == socket.IPPROTO_ICMPV6:
            s.setsockopt(socket.IPPROTO_ICMPV6, ICMP6_FILTER, struct.pack("=8I", *r.icmpv_filter))
        return
    if r.hdrincl:
        s.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
    if r.nodefrag:
        s.setsockopt(socket.IPPROTO_IP, IP_NODEFRAG, 1)
    if r.icmpv_filter and s.proto == socket.IPPROTO_ICMP:
        s.setsockopt(SOL_RAW, ICMP_FILTER, struct.pack("=I", r.icmpv_filter[0]))


@planner("INETSK")
def _plan_inet(e, imgdir: ImageDir, state: dict[str, Any]) -> FileObj:
    sk = e.isk
    obj = InetSocket(sk.id, sk.flags, e=sk)
    if sk.proto == socket.IPPROTO_TCP and sk.state not in (TCP_LISTEN, TCP_CLOSE):
        from .tcp import plan_established  # connections: TCP_REPAIR, --tcp-established

        return plan_established(sk, imgdir)
    if sk.family not in (socket.AF_INET, socket.AF_INET6):
        return refuse(obj, f"address family {sk.family}")
    return obj


class UnixSocket(FileObj):
    e: Any = None
    queued: list[bytes] = Factory(list)  # packets waiting in this socket's receive queue
    kind: ClassVar[str] = "unix socket"

    def describe(self) -> str:
        name = self.e.name.decode(errors="replace") if self.e.name else ""
        return f"unix socket:[{self.e.ino}]{' ' + name if name else ''} (file id {self.id})"

    def open(self, ctx: OpenContext) -> int:
        e = self.e
        key = f"socket:[{e.ino}]"
        if key in ctx.inherit:
            return os.dup(ctx.inherit[key])
        try:
            named = ctx.kind_cache("unix_named")  # bound sockets made early, for a client to connect to
            server = self._named_peer(ctx)
            if e.ino in named:
                s = named.pop(e.ino)
            elif e.peer and e.state == TCP_ESTABLISHED and server is None:
                s = self._pair_end(ctx)
            else:
                s = self._fresh(ctx)
                if server is not None:
                    self._connect_to(ctx, s, server)
            if e.HasField("shutdown") and e.shutdown in SHUT_BITS:
                s.shutdown(SHUT_BITS[e.shutdown])
            fd = s.detach()
        except OSError as err:
            raise SpiceError("sockets", f"{self.describe()}: {err.strerror}") from None
        return with_file_params(fd, self.flags, self.e.fown, self.describe())

    def _fresh(self, ctx: OpenContext) -> socket.socket:
        """A new socket with the dumped options, bound to its name and listening as dumped."""
        e = self.e
        s = socket.socket(socket.AF_UNIX, e.type)
        _apply_opts(s, e.opts, self.describe())
        if e.name and e.name[0] == 0:
            s.bind(e.name)  # abstract
        elif e.name:
            _bind_file(s, e, ctx)
        if e.state == TCP_LISTEN:
            s.listen(e.backlog)
        if e.name:
            ctx.kind_cache("unix_bound")[e.ino] = True
        return s

    def _named_peer(self, ctx: OpenContext) -> UnixSocket | None:
        """The bound socket this one is connected to one way (a datagram client of a server such as
        syslogd's /dev/log: the server is not connected back), which criu reconnects by its name."""
        e = self.e
        if not e.peer or e.state != TCP_ESTABLISHED:
            return None
        peer = ctx.state.get("unix_by_ino", {}).get(e.peer)
        if peer is None or peer.e.peer == e.ino or not peer.e.name:
            return None
        return peer

    def _connect_to(self, ctx: OpenContext, s: socket.socket, server: UnixSocket) -> None:
        """Connect to server's name, binding the server first if its own task has not yet."""
        se = server.e
        if se.deleted:
            raise SpiceError("sockets", f"{self.describe()}: connected to {server.describe()}, "
                                        "whose socket file was deleted: not supported")
        if not ctx.kind_cache("unix_bound").get(se.ino):
            ctx.kind_cache("unix_named")[se.ino] = server._fresh(ctx)
        if se.name[0] == 0:
            s.connect(se.name)
        else:
            s.connect(_bound_path(se, ctx))

    def _pair_end(self, ctx: OpenContext) -> socket.socket:
        pairs: dict[int, socket.socket] = ctx.kind_cache("unix_pairs")
        me = pairs.pop(self.e.ino, None)
        if me is None:
            peer_obj = ctx.state.get("unix_by_ino", {}).get(self.e.peer)
            if peer_obj is None or peer_obj.e.peer != self.e.ino:
                raise SpiceError("sockets", f"{self.describe()}: peer {self.e.peer} is outside the dump "
                                 "(--ext-unix-sk not supported)")
            me, other = socket.socketpair(socket.AF_UNIX, self.e.type)
            for s, obj in ((me, self), (other, peer_obj)):
                _apply_opts(s, obj.e.opts, obj.describe())
            pairs[self.e.peer] = other
            # a socket's queued packets are sent by its peer
            for data in self.queued:
                other.send(data)
            for data in peer_obj.queued:
                me.send(data)
        return me


def _bound_path(e, ctx: OpenContext | None) -> str:
    """Where a unix socket's file name is (its name_dir for a relative name, under --root; as the
    tree names it without ctx)."""
    path = e.name.split(b"\0", 1)[0].decode(errors="surrogateescape")  # names end in the kernel's NUL
    if e.HasField("name_dir") and not path.startswith("/"):
        path = os.path.join(e.name_dir, path)
    if path.startswith("/") and ctx is not None:
        path = ctx.path(path)
    return path


def _bind_file(s: socket.socket, e, ctx: OpenContext) -> None:
    """Bind to a path as the dumped socket was: the dumped (dead) socket's file, left behind, is
    unlinked first (as criu does; anything else there is left alone and bind fails); then the
    file gets its dumped owner and mode, and is unlinked again if it was deleted when dumped.
    In the tree's own mount namespace (restore/mntns.py) a child joined to it binds the socket by
    the tree's path: the name the socket keeps is the one it had, not ours of its file."""
    mnt = ctx.cache.get("mntns")
    if mnt is not None:
        from ..linux.setns import NsCallError, call_in

        try:
            call_in(mnt["pid"], ("mnt",), lambda: _bind_at(s, e, _bound_path(e, None)))
        except NsCallError as err:
            raise OSError(0, str(err)) from None
        return
    _bind_at(s, e, _bound_path(e, ctx))


def _bind_at(s: socket.socket, e, path: str) -> None:
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass
    s.bind(path)
    if e.HasField("file_perms"):
        os.chown(path, e.file_perms.uid, e.file_perms.gid, follow_symlinks=False)
        os.chmod(path, stat.S_IMODE(e.file_perms.mode))
    if e.deleted:
        os.unlink(path)


def _made(obj: FileObj, family: int, typ: int, proto: int, setup) -> int:
    """A socket made in the restorer for obj (its dumped sk_opts applied, then setup(s)), handed
    over as an fd with the dumped file flags and owner; any OSError is one error naming obj."""
    try:
        s = socket.socket(family, typ, proto)
        try:
            _apply_opts(s, obj.e.opts, obj.describe())
            setup(s)
            fd = s.detach()
        finally:
            s.close()
    except OSError as err:
        raise SpiceError("sockets", f"{obj.describe()}: {err.strerror}") from None
    return with_file_params(fd, obj.flags, obj.e.fown, obj.describe())


class NetlinkSocket(FileObj):
    e: Any = None
    kind: ClassVar[str] = "netlink socket"

    def describe(self) -> str:
        return f"netlink socket:[{self.e.ino}] (protocol {self.e.protocol}, file id {self.id})"

    def open(self, ctx: OpenContext) -> int:
        """Bound to its portid and groups (the first 32: criu dumps no others), connected to its peer."""
        e = self.e
        if any(e.groups[1:]):
            raise SpiceError("sockets", f"{self.describe()}: in more than 32 groups: not supported")

        def setup(s: socket.socket) -> None:
            if e.portid:
                s.bind((e.portid, e.groups[0] if e.groups else 0))
            if e.dst_portid or e.dst_group:
                s.connect((e.dst_portid, e.dst_group))

        return _made(self, socket.AF_NETLINK, socket.SOCK_RAW, e.protocol, setup)


@planner("NETLINKSK")
def _plan_netlink(e, imgdir: ImageDir, state: dict[str, Any]) -> FileObj:
    return NetlinkSocket(e.nlsk.id, e.nlsk.flags, e=e.nlsk)


class PacketSocket(FileObj):
    e: Any = None
    kind: ClassVar[str] = "packet socket"

    def describe(self) -> str:
        return f"packet socket (protocol {socket.ntohs(self.e.protocol):#06x}, file id {self.id})"

    def open(self, ctx: OpenContext) -> int:
        """Made with its protocol, its options set, bound to its interface, its multicast list
        joined and its fanout group entered (criu's order)."""
        e = self.e

        def setup(s: socket.socket) -> None:
            for opt, v in ((PACKET_VERSION, e.version), (PACKET_RESERVE, e.reserve), (PACKET_AUXDATA, e.aux_data),
                           (PACKET_ORIGDEV, e.orig_dev), (PACKET_VNET_HDR, e.vnet_hdr), (PACKET_LOSS, e.loss),
                           (PACKET_TIMESTAMP, e.timestamp), (PACKET_COPY_THRESH, e.copy_thresh)):
                if v:
                    s.setsockopt(SOL_PACKET, opt, int(v))
            if e.ifindex:
                s.bind((socket.if_indextoname(e.ifindex), socket.ntohs(e.protocol)))
            for m in e.mclist:
                s.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP,
                             struct.pack("=iHH8s", m.index, m.type, len(m.addr), m.addr[:8]))
            if e.HasField("fanout") and e.fanout != 0xFFFFFFFF:
                s.setsockopt(SOL_PACKET, PACKET_FANOUT, e.fanout)

        return _made(self, socket.AF_PACKET, e.type, e.protocol, setup)


@planner("PACKETSK")
def _plan_packet(e, imgdir: ImageDir, state: dict[str, Any]) -> FileObj:
    p = e.psk
    obj = PacketSocket(p.id, p.flags, e=p)
    if p.HasField("rx_ring") or p.HasField("tx_ring"):
        return refuse(obj, "a memory-mapped ring")
    return obj


@planner("UNIXSK")
def _plan_unix(e, imgdir: ImageDir, state: dict[str, Any]) -> FileObj:
    sk = e.usk
    if "sk_queues" not in state:
        q: dict[int, list[bytes]] = {}
        if imgdir.exists("sk-queues.img"):
            for ent in imgdir.load("sk-queues.img").entries:
                if ent.msg.scm:
                    raise SpiceError("sockets", "sk-queues.img: queued file descriptors (SCM_RIGHTS) not supported")
                q.setdefault(ent.msg.id_for, []).append(ent.extra)
        state["sk_queues"] = q
    obj = UnixSocket(sk.id, sk.flags, e=sk, queued=state["sk_queues"].get(sk.id, []))
    state.setdefault("unix_by_ino", {})[sk.ino] = obj
    return obj
