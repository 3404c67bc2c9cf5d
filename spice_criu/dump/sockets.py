# SPDX-License-Identifier: MIT
"""Sockets: unix (pairs, bound, listening, with their queued packets), inet (TCP listening,
established or closed, UDP, raw), netlink and packet sockets, read through sock_diag and
getsockopt() the way CRIU 4.2 records them.

Mirror of restore/sockets.py. A unix socket is a UNIXSK entry (state, type, peer inode, name,
backlog, shutdown, options); the packets waiting in its receive queue go to sk-queues.img, peeked
with SO_PEEK_OFF so the socket keeps them. An inet socket is an INETSK entry (addresses, ports,
state, backlog, IP and TCP options); a TCP connection, established or half-closed (only with
--tcp-established, like criu) also gets its TCP_REPAIR snapshot and network lock (tcp.py). Sockets
sock_diag does not list (never bound or connected) are made up from getsockname(), as criu does.
Connections still in SYN_SENT, listeners holding connections not accept()ed yet (criu's in-flight
check), sockets with queued file descriptors (SCM_RIGHTS), packet rings and other families are
refused, naming the socket.
"""

from __future__ import annotations

import _socket as socket  # the C module: socket.py's enums and selectors cost ~5 ms of start-up
import errno
import fcntl
import os
import struct

from ..errors import SpiceError
from ..images import codec
from ..linux import netlink
from ..linux.netlink import NLM_F_DUMP, NLM_F_REQUEST
from ..log import log
from ..tcpstates import CLOSE as TCP_CLOSE
from ..tcpstates import CONNECTED as TCP_CONNECTED
from ..tcpstates import LISTEN as TCP_LISTEN
from ..tcpstates import name as tcp_state_name
from .files import OpenFd, add_file, dumper, fown, socket_details

TYPE_CHECKING = False  # typing costs ~10 ms of start-up; annotations are strings
if TYPE_CHECKING:
    from typing import Any

NETLINK_SOCK_DIAG, SOCK_DIAG_BY_FAMILY = 4, 20
UDIAG_SHOW_NAME, UDIAG_SHOW_VFS, UDIAG_SHOW_PEER, UDIAG_SHOW_ICONS, UDIAG_SHOW_RQLEN = 1, 2, 4, 8, 0x10
UNIX_DIAG_NAME, UNIX_DIAG_VFS, UNIX_DIAG_PEER, UNIX_DIAG_ICONS, UNIX_DIAG_RQLEN, UNIX_DIAG_SHUTDOWN = 0, 1, 2, 3, 4, 6
INET_DIAG_SHUTDOWN = 8
TCP_INFO = 11
SOL_RAW, ICMP_FILTER, IP_NODEFRAG, ICMP6_FILTER, IPV6_HDRINCL = 255, 1, 22, 1, 36
NDIAG_PROTO_ALL, NDIAG_SHOW_GROUPS, NETLINK_DIAG_GROUPS = 255, 2, 1
PACKET_SHOW_INFO, PACKET_SHOW_MCLIST, PACKET_SHOW_RING_CFG, PACKET_SHOW_FANOUT = 1, 2, 4, 8
PACKET_DIAG_INFO, PACKET_DIAG_MCLIST, PACKET_DIAG_RX_RING, PACKET_DIAG_TX_RING, PACKET_DIAG_FANOUT = 0, 1, 2, 3, 4
PDI_AUXDATA, PDI_ORIGDEV, PDI_VNETHDR, PDI_LOSS = 2, 4, 8, 0x10
SIOCUNIXFILE = 0x89E0  # SIOCPROTOPRIVATE: an O_PATH fd of a bound unix socket's file
SO_PEEK_OFF, SO_BUF_LOCK, SO_PASSSEC, SO_NO_CHECK = 42, 72, 34, 11
SIOCINQ = 0x541B


# ------------------------------------------------------------------------------------------ sock_diag


def _split(body: bytes, head: int) -> tuple[bytes, dict[int, bytes]]:
    return body[:head], netlink.attributes(body, head)


def unix_diag(ctx: Any, ino: int) -> tuple[tuple[int, ...], dict[int, bytes]]:
    show = UDIAG_SHOW_NAME | UDIAG_SHOW_VFS | UDIAG_SHOW_PEER | UDIAG_SHOW_ICONS | UDIAG_SHOW_RQLEN
    req = struct.pack("=BBHIIIII", socket.AF_UNIX, 0, 0, 0xFFFFFFFF, ino, show, 0xFFFFFFFF, 0xFFFFFFFF)
    msg = struct.pack("=IHHII", 16 + len(req), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, 1, 0) + req
    for body in _diag_raw(ctx, msg):
        head, attrs = _split(body, 16)
        fam, typ, state, _pad, dino = struct.unpack_from("=BBBBI", head)
        if dino == ino:
            return (typ, state), attrs
    raise OSError(2, "no such unix socket")


def inet_diag(ctx: Any, family: int, proto: int, ino: int) -> tuple[dict[str, Any], dict[int, bytes]]:
    req = struct.pack("=BBBBI", family, proto, 0, 0, 0xFFFFFFFF) + bytes(48)
    msg = struct.pack("=IHHII", 16 + len(req), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + req
    for body in _diag_raw(ctx, msg):
        head, attrs = _split(body, 72)
        fam, state = struct.unpack_from("=BB", head)
        sport, dport = struct.unpack_from("!HH", head, 4)
        src = list(struct.unpack_from("<4I", head, 8))
        dst = list(struct.unpack_from("<4I", head, 24))
        _exp, rq, wq, _uid, dino = struct.unpack_from("=IIIII", head, 52)
        if dino == ino:
            return {"family": fam, "state": state, "sport": sport, "dport": dport, "src": src, "dst": dst,
                    "rqueue": rq, "wqueue": wq}, attrs
    raise OSError(2, "no such inet socket")


def netlink_diag(ctx: Any, ino: int) -> tuple[tuple[int, int, int, int], dict[int, bytes]] | None:
    """(state, portid, dst_portid, dst_group) and attributes of a netlink socket; None when sock_diag
    does not list it (never bound: it is in no netlink table yet)."""
    req = struct.pack("=BBHII2I", socket.AF_NETLINK, NDIAG_PROTO_ALL, 0, 0, NDIAG_SHOW_GROUPS, 0, 0)
    msg = struct.pack("=IHHII", 16 + len(req), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + req
    for body in _diag_raw(ctx, msg):
        head, attrs = _split(body, 28)
        _fam, _typ, _proto, state, portid, dst_portid, dst_group, dino = struct.unpack_from("=BBBBIIII", head)
        if dino == ino:
            return (state, portid, dst_portid, dst_group), attrs
    return None


def packet_diag(ctx: Any, ino: int) -> tuple[tuple[int, int], dict[int, bytes]] | None:
    """(type, protocol in host order) and attributes of a packet socket."""
    show = PACKET_SHOW_INFO | PACKET_SHOW_MCLIST | PACKET_SHOW_RING_CFG | PACKET_SHOW_FANOUT
    req = struct.pack("=BBHII2I", socket.AF_PACKET, 0, 0, 0, show, 0, 0)
    msg = struct.pack("=IHHII", 16 + len(req), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + req
    for body in _diag_raw(ctx, msg):
        head, attrs = _split(body, 16)
        _fam, typ, num, dino = struct.unpack_from("=BBHI", head)
        if dino == ino:
            return (typ, num), attrs
    return None


def net_ns_id(ctx: Any) -> int:
    """The ns_id of the tree's sockets: its own net namespace's id, or ours."""
    own = ctx.ids.own_ns("net")
    if own is not None:
        return own[0]
    root = ctx.ids.root_ids
    return root.net_ns_id if root.HasField("net_ns_id") else 0


def socket_in(ctx: Any, family: int, typ: int, proto: int) -> socket.socket:
    """A socket in the tree's net namespace (dump/netns.py, loaded only for a tree with its own)."""
    if ctx.ids.own_ns("net") is None:
        return socket.socket(family, typ, proto)
    from .netns import socket_in as in_tree_ns

    return in_tree_ns(ctx, family, typ, proto)


def _diag_raw(ctx: Any, msg: bytes) -> list[bytes]:
    """sock_diag's answer, asked in the tree's net namespace (it lists that namespace's sockets)."""
    nl = socket_in(ctx, socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG)
    try:
        nl.settimeout(5)
        return netlink.request(nl, msg)
    finally:
        nl.close()


# ------------------------------------------------------------------------------------------ options


def _int(s: socket.socket, level: int, opt: int) -> int:
    return s.getsockopt(level, opt)


def sk_opts(s: socket.socket, inet: bool, o: Any) -> None:
    """Fill sk_opts_entry o with the fields CRIU 4.2 fills (so_passcred/so_passsec only for unix)."""
    g = lambda opt: _int(s, socket.SOL_SOCKET, opt)  # noqa: E731
    o.so_sndbuf, o.so_rcvbuf = g(socket.SO_SNDBUF), g(socket.SO_RCVBUF)
    for attr, opt in (("snd", socket.SO_SNDTIMEO), ("rcv", socket.SO_RCVTIMEO)):
        sec, usec = struct.unpack("qq", s.getsockopt(socket.SOL_SOCKET, opt, 16))
        setattr(o, f"so_{attr}_tmo_sec", sec)
        setattr(o, f"so_{attr}_tmo_usec", usec)
    o.reuseaddr = bool(g(socket.SO_REUSEADDR))
    o.so_priority = g(socket.SO_PRIORITY)
    o.so_rcvlowat = g(socket.SO_RCVLOWAT)
    mark = g(socket.SO_MARK)
    if mark:
        o.so_mark = mark
    if not inet:
        o.so_passcred = bool(g(socket.SO_PASSCRED))
        o.so_passsec = bool(g(SO_PASSSEC))
    o.so_dontroute = bool(g(socket.SO_DONTROUTE))
    o.so_no_check = bool(g(SO_NO_CHECK))
    dev = s.getsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, 16).rstrip(b"\0")
    if dev:
        o.so_bound_dev = dev.decode()
    o.so_reuseport = bool(g(socket.SO_REUSEPORT))
    o.so_broadcast = bool(g(socket.SO_BROADCAST))
    o.so_keepalive = bool(g(socket.SO_KEEPALIVE))
    o.so_oobinline = g(socket.SO_OOBINLINE)
    onoff, linger = struct.unpack("ii", s.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER, 8))
    if onoff:
        o.so_linger = linger
    o.so_buf_lock = g(SO_BUF_LOCK)


# ------------------------------------------------------------------------------------------ unix


@dumper("socket")
def _dump_socket(of: OpenFd, fid: int) -> str:
    s = socket.socket(fileno=os.dup(of.lfd))
    try:
        if s.family == socket.AF_UNIX:
            return _unix(of, fid, s)
        if s.family in (socket.AF_INET, socket.AF_INET6):
            return _inet(of, fid, s)
        if s.family == socket.AF_NETLINK:
            return _netlink(of, fid, s)
        if s.family == socket.AF_PACKET:
            return _packet(of, fid, s)
    finally:
        s.close()
    raise SpiceError("dump", f"{of.describe()} ({socket_details(of.lfd)}): not supported")


def _unix(of: OpenFd, fid: int, s: socket.socket) -> str:
    ino = of.st.st_ino
    try:
        (typ, state), attrs = unix_diag(of.ctx, ino)
    except OSError as e:
        raise SpiceError("dump", f"{of.describe()}: sock_diag: {e.strerror}") from None
    name = attrs.get(UNIX_DIAG_NAME, b"")
    e = codec.pb("unix_sk_entry", lite=True)(id=fid, ino=ino, type=typ, state=state, flags=of.flags, uflags=0,
                                             name=name)
    e.peer = struct.unpack("=I", attrs[UNIX_DIAG_PEER])[0] if UNIX_DIAG_PEER in attrs else 0
    rq, wq = struct.unpack("=II", attrs.get(UNIX_DIAG_RQLEN, bytes(8)))
    e.backlog = wq if state == TCP_LISTEN else 0
    if state == TCP_LISTEN and attrs.get(UNIX_DIAG_ICONS, b""):
        raise SpiceError("dump", f"{of.describe()}: a listening unix socket with connections not yet accepted: "
                         "not supported")
    shut = attrs.get(UNIX_DIAG_SHUTDOWN)
    if shut and shut[0]:
        e.shutdown = shut[0] & 3
    if name and name[0] != 0:
        _unix_file(of, e, name)
    for k, v in fown(of.lfd).items():
        setattr(e.fown, k, v)
    sk_opts(s, False, e.opts)
    e.ns_id = net_ns_id(of.ctx)
    if state != TCP_LISTEN:
        _queue(of, fid, s, typ)
    add_file(of.ctx, "UNIXSK", fid, "usk", e)
    if name:
        _before_one_way_clients(of, e)
    return "UNIXSK"


def _before_one_way_clients(of: OpenFd, e) -> None:
    """A bound socket goes into files.img before the sockets connected to it one way (datagram
    clients of a server such as syslogd's /dev/log), as criu writes them: criu's restore resolves a
    peer only among the sockets read before it ("Peer ... unresolved")."""
    entries = of.ctx.images.entries("files.img")
    for i, fe in enumerate(entries[:-1]):
        if fe.HasField("usk") and fe.usk.peer == e.ino and fe.usk.ino != e.peer:
            of.ctx.images.move_last_before("files.img", i)
            return


def _queue(of: OpenFd, fid: int, s: socket.socket, typ: int) -> None:
    """The packets in the socket's receive queue (sk-queues.img), read without taking them."""
    import fcntl

    try:
        pending = struct.unpack("i", fcntl.ioctl(s.fileno(), SIOCINQ, bytes(4)))[0]
    except OSError:
        pending = 0
    if pending <= 0 and typ == socket.SOCK_STREAM:
        return
    old = s.getsockopt(socket.SOL_SOCKET, SO_PEEK_OFF)
    s.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, 0)
    try:
        while True:
            try:
                data, anc, _flags, _addr = s.recvmsg(max(pending, 1) + 65536, socket.CMSG_SPACE(4 * 253),
                                                     socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                break
            if anc:
                raise SpiceError("dump", f"{of.describe()}: queued file descriptors or credentials (SCM) "
                                 "are not supported")
            if not data and typ == socket.SOCK_STREAM:
                break
            of.ctx.images.add("sk-queues.img", "SK_QUEUES",
                              codec.pb("sk_packet_entry", lite=True)(id_for=fid, length=len(data)), data)
            if typ == socket.SOCK_STREAM and len(data) >= pending:
                break
    finally:
        s.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, old)


# ------------------------------------------------------------------------------------------ inet


def _inet(of: OpenFd, fid: int, s: socket.socket) -> str:
    proto = s.proto or (socket.IPPROTO_TCP if s.type == socket.SOCK_STREAM else socket.IPPROTO_UDP)
    what = f"{of.describe()} ({socket_details(of.lfd)})"
    is_raw = s.type == socket.SOCK_RAW
    if not is_raw and proto not in (socket.IPPROTO_TCP, socket.IPPROTO_UDP):
        raise SpiceError("dump", f"{what}: protocol {proto} not supported")
    if is_raw:  # as criu, from getsockname(): a raw socket's "port" is its protocol
        d, attrs, listed = _unconnected(s, proto, what), {}, False
    else:
        try:
            (d, attrs), listed = inet_diag(of.ctx, s.family, proto, of.st.st_ino), True
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise SpiceError("dump", f"{what}: sock_diag: {e.strerror}") from None
            d, attrs, listed = _unconnected(s, proto, what), {}, False  # never bound or connected
    if d["dport"]:  # a connection: name both ends
        raw = (struct.pack("<4I", *d["src"]), struct.pack("<4I", *d["dst"]))
        src, dst = (socket.inet_ntop(s.family, x[:4] if s.family == socket.AF_INET else x) for x in raw)
        what = f"{of.describe()} ({socket_details(of.lfd)} {src}:{d['sport']} -> {dst}:{d['dport']})"
    state = d["state"]
    connected = proto == socket.IPPROTO_TCP and state in TCP_CONNECTED  # established or half-closed
    if proto == socket.IPPROTO_TCP and not connected and state not in (TCP_LISTEN, TCP_CLOSE):
        raise SpiceError("dump", f"{what}: TCP socket in state {tcp_state_name(state)}: only established or "
                         "half-closed connections (and listening or closed sockets) can be dumped")
    tcp_close = connected and of.ctx.opts.tcp_close  # CRIU's --tcp-close: the connection is not saved
    if connected and not (of.ctx.opts.tcp_established or tcp_close):
        raise SpiceError("dump", f"{what}: connected TCP socket, consider using --tcp-established option")
    if proto == socket.IPPROTO_TCP and state == TCP_LISTEN and d["rqueue"]:
        # connections the kernel completed but the task has not accept()ed: lost on restore (criu too)
        if not of.ctx.opts.skip_in_flight:
            raise SpiceError("dump", f"{what}: {d['rqueue']} in-flight connection(s) not accepted yet: they "
                             "can be ignored with the --skip-in-flight option")
        log.info(f"Skipping in-flight connections of {what}")
    n = 1 if s.family == socket.AF_INET else 4
    e = codec.pb("inet_sk_entry", lite=True)(id=fid, ino=of.st.st_ino, family=s.family, type=s.type, proto=proto,
                                  state=state, src_port=d["sport"], dst_port=d["dport"], flags=of.flags,
                                  backlog=d["wqueue"], src_addr=d["src"][:n], dst_addr=d["dst"][:n])
    for k, v in fown(of.lfd).items():
        setattr(e.fown, k, v)
    sk_opts(s, True, e.opts)
    if s.family == socket.AF_INET6:
        e.v6only = bool(s.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY))
    ttl = s.getsockopt(socket.IPPROTO_IP, socket.IP_TTL) if s.family == socket.AF_INET else None
    if ttl is not None:
        e.ip_opts.ttl = ttl
    if s.getsockopt(socket.IPPROTO_IP, 15) if s.family == socket.AF_INET else 0:  # IP_FREEBIND
        e.ip_opts.freebind = True
    tos = s.getsockopt(socket.IPPROTO_IP, socket.IP_TOS) if s.family == socket.AF_INET else 0
    if tos:
        e.ip_opts.tos = tos
    if is_raw:
        _raw_opts(s, proto, e.ip_opts.raw)
    e.ip_opts.SetInParent()  # present even when empty (IPv6), as criu writes it
    e.tcp_opts.SetInParent()  # UDP sockets too
    # criu finds sockets in one sock_diag dump, which lists no closed TCP socket: those (like the ones
    # sock_diag does not know at all) it makes up from getsockname(), without a netns id
    if listed and not (proto == socket.IPPROTO_TCP and state == TCP_CLOSE):
        e.ns_id = net_ns_id(of.ctx)
    if proto == socket.IPPROTO_TCP:
        if s.getsockopt(socket.IPPROTO_TCP, socket.TCP_CORK):
            e.tcp_opts.cork = True
        if s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY):
            e.tcp_opts.nodelay = True
        e.tcp_opts.keepcnt = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT)
        e.tcp_opts.keepidle = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE)
        e.tcp_opts.keepintvl = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL)
    shut = attrs.get(INET_DIAG_SHUTDOWN)
    if shut and shut[0]:
        e.shutdown = shut[0] & 3
    if connected and not tcp_close:
        of.ctx.tcp.dump(of.ctx, of.lfd, e, what)
    add_file(of.ctx, "INETSK", fid, "isk", e)
    return "INETSK"


def _netlink(of: OpenFd, fid: int, s: socket.socket) -> str:
    """A netlink socket as criu dumps it: its address (portid, multicast groups: the first 32, as
    criu), its peer, and its options; a socket never bound is not in sock_diag's tables: state 0,
    no address, no netns id. Messages queued to it are not saved (nor by criu)."""
    e = codec.pb("netlink_sk_entry", lite=True)(id=fid, ino=of.st.st_ino, protocol=s.proto, state=0,
                                                flags=of.flags, portid=0, dst_portid=0, dst_group=0)
    found = netlink_diag(of.ctx, of.st.st_ino)
    if found is not None:
        (e.state, e.portid, e.dst_portid, e.dst_group), attrs = found
        raw = attrs.get(NETLINK_DIAG_GROUPS, b"")
        groups = struct.unpack(f"={len(raw) // 4}I", raw[: len(raw) // 4 * 4])
        if any(groups[1:]):  # criu writes and restores the first 32 only
            raise SpiceError("dump", f"{of.describe()}: netlink socket in more than 32 groups: not supported")
        e.groups.extend(groups[:1])
        e.ns_id = net_ns_id(of.ctx)
    for k, v in fown(of.lfd).items():
        setattr(e.fown, k, v)
    sk_opts(s, False, e.opts)
    add_file(of.ctx, "NETLINKSK", fid, "nlsk", e)
    return "NETLINKSK"


def _packet(of: OpenFd, fid: int, s: socket.socket) -> str:
    """A packet socket as criu dumps it, from packet sock_diag: the interface it is bound to, its
    protocol, its options (version, reserve, auxdata, origdev, vnet header, loss, timestamps, copy
    threshold), its multicast list and fanout group. Memory-mapped rings are refused; packets
    queued to it are not saved (nor by criu)."""
    found = packet_diag(of.ctx, of.st.st_ino)
    if found is None:
        raise SpiceError("dump", f"{of.describe()}: packet sock_diag does not list it")
    (typ, num), attrs = found  # the image keeps the protocol in network order, as socket() takes it
    if attrs.get(PACKET_DIAG_RX_RING) or attrs.get(PACKET_DIAG_TX_RING):
        raise SpiceError("dump", f"{of.describe()}: a packet socket with a memory-mapped ring: not supported")
    index, version, reserve, copy_thresh, tstamp, flags = struct.unpack("=6I", attrs[PACKET_DIAG_INFO][:24])
    e = codec.pb("packet_sock_entry", lite=True)(
        id=fid, type=typ, protocol=socket.htons(num), flags=of.flags, ifindex=index, version=version, reserve=reserve,
        aux_data=bool(flags & PDI_AUXDATA), orig_dev=bool(flags & PDI_ORIGDEV), vnet_hdr=bool(flags & PDI_VNETHDR),
        loss=bool(flags & PDI_LOSS), timestamp=tstamp, copy_thresh=copy_thresh)
    mcl = attrs.get(PACKET_DIAG_MCLIST, b"")
    for off in range(0, len(mcl) - len(mcl) % 44, 44):  # struct packet_diag_mclist
        mindex, count, mtype, alen = struct.unpack_from("=IIHH", mcl, off)
        if count != 1:
            raise SpiceError("dump", f"{of.describe()}: a multicast entry joined {count} times: not supported")
        m = e.mclist.add()
        m.index, m.type, m.addr = mindex, mtype, mcl[off + 12: off + 12 + min(alen, 32)]
    if PACKET_DIAG_FANOUT in attrs:
        e.fanout = struct.unpack("=I", attrs[PACKET_DIAG_FANOUT][:4])[0]
    for k, v in fown(of.lfd).items():
        setattr(e.fown, k, v)
    sk_opts(s, True, e.opts)
    e.ns_id = net_ns_id(of.ctx)
    add_file(of.ctx, "PACKETSK", fid, "psk", e)
    return "PACKETSK"


def _raw_opts(s: socket.socket, proto: int, r) -> None:
    """ip_opts.raw of a raw socket, as criu fills it: the options that are on, and the type filter
    of an ICMP (one word) or ICMPv6 (eight words) socket."""
    if s.family == socket.AF_INET:
        if s.getsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL):
            r.hdrincl = True
        if s.getsockopt(socket.IPPROTO_IP, IP_NODEFRAG):
            r.nodefrag = True
        if proto == socket.IPPROTO_ICMP:
            r.icmpv_filter.append(struct.unpack("=I", s.getsockopt(SOL_RAW, ICMP_FILTER, 4))[0])
        return
    if s.getsockopt(socket.IPPROTO_IPV6, IPV6_HDRINCL):
        r.hdrincl = True
    if proto == socket.IPPROTO_ICMPV6:
        r.icmpv_filter.extend(struct.unpack("=8I", s.getsockopt(socket.IPPROTO_ICMPV6, ICMP6_FILTER, 32)))


def _unconnected(s: socket.socket, proto: int, what: str) -> dict:
    """What sock_diag would say of a socket it does not list: one never bound or connected (or a
    TCP socket only bound), as criu's gen_uncon_sk() makes it up from getsockname()."""
    try:
        s.getpeername()
    except OSError:
        pass
    else:
        raise SpiceError("dump", f"{what}: connected, but sock_diag does not list it")
    host, port = s.getsockname()[:2]
    words = list(struct.unpack("<4I", socket.inet_pton(s.family, host).ljust(16, b"\0")))
    state = s.getsockopt(socket.IPPROTO_TCP, TCP_INFO, 1)[0] if proto == socket.IPPROTO_TCP else TCP_CLOSE
    return {"state": state, "sport": port, "dport": 0, "src": words, "dst": [0, 0, 0, 0], "rqueue": 0,
            "wqueue": 0}


def _unix_file(of: OpenFd, e, name: bytes) -> None:
    """The file a bound unix socket has in the filesystem, as criu records it: its owner and mode,
    `deleted` when it was unlinked, and for a relative name the directory it lives in (name_dir).
    The kernel hands out the bound file itself (SIOCUNIXFILE), wherever the task's cwd went since."""
    path = name.split(b"\0", 1)[0].decode(errors="surrogateescape")  # the kernel reports a trailing NUL
    try:
        pfd = fcntl.ioctl(of.lfd, SIOCUNIXFILE)
    except OSError as err:
        raise SpiceError("dump", f"{of.describe()}: can't open the file of unix socket {path!r}: "
                                 f"{err.strerror}") from None
    try:
        full, st = os.readlink(f"/proc/self/fd/{pfd}"), os.fstat(pfd)
    finally:
        os.close(pfd)
    if full.endswith(" (deleted)"):
        full = full.removesuffix(" (deleted)")
        e.deleted = True
    if not path.startswith("/"):
        if not full.endswith("/" + path):
            raise SpiceError("dump", f"{of.describe()}: unix socket bound to {path!r} lives at {full}")
        e.name_dir = full[: -len(path) - 1] or "/"
    e.file_perms.mode, e.file_perms.uid, e.file_perms.gid = st.st_mode, st.st_uid, st.st_gid
