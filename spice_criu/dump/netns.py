# SPDX-License-Identifier: MIT
"""The tree's own network namespace (a container's, `unshare -n`'s), written as CRIU 4.2 writes it.

Everything is read from inside the namespace (the dumping thread setns()es into it and back, and
the tools it runs inherit it): netns-<id>.img (the `default` and `all` IPv4/IPv6 device
settings, net.unix.max_dgram_qlen, net.ipv4.ping_group_range when not the default), netdev-<id>.img
(one entry per link: loopback only -- other kinds, veth, tun, macvlan..., are refused naming them),
then the raw outputs of `ip addr save` (ifaddr-), `ip route save` (route-), `ip -6 route save`
(route6-), `ip rule save` (rule-), `iptables-legacy-save` / `ip6tables-legacy-save` (iptables-,
ip6tables-; the plain tools when iptables is not the nf_tables one) and `nft list ruleset`
(nftables-). Before these, unless --network-lock skip, the namespace is locked as criu locks it:
iptables-restore of a CRIU chain dropping every packet not marked 0xC114, hooked into INPUT and
OUTPUT (--network-lock nftables: a table inet CRIU-<run id> whose input and output chains drop
them), so the images hold the lock, as criu's do, and criu's restore or ours removes it. A TCP
connection inside the namespace is kept quiet by this lock instead of a rule of its own.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import struct

from ..errors import SpiceError
from ..images import codec
from ..linux import netlink
from ..linux.setns import CLONE_NEWNET
from ..linux.setns import setns as linux_setns
from ..log import log

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

    from .run import DumpContext

ARPHRD_LOOPBACK = 772
RTM_GETLINK = 18
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINK, IFLA_LINKINFO, IFLA_LINK_NETNSID = 1, 3, 4, 5, 18, 37
IFLA_INFO_KIND = 1

#: the per-device IPv4 settings criu keeps, in its order (netdev conf4, netns def_conf4/all_conf4)
DEVCONFS4 = (
    "accept_local", "accept_redirects", "accept_source_route", "arp_accept", "arp_announce", "arp_filter",
    "arp_ignore", "arp_notify", "bootp_relay", "disable_policy", "disable_xfrm", "force_igmp_version",
    "forwarding", "igmpv2_unsolicited_report_interval", "igmpv3_unsolicited_report_interval", "log_martians",
    "medium_id", "promote_secondaries", "proxy_arp", "proxy_arp_pvlan", "route_localnet", "rp_filter",
    "secure_redirects", "send_redirects", "shared_media", "src_valid_mark", "tag", "ignore_routes_with_linkdown",
    "drop_gratuitous_arp", "drop_unicast_in_l2_multicast",
)
#: the IPv6 ones (stable_secret is the only string)
DEVCONFS6 = (
    "accept_dad", "accept_ra", "accept_ra_defrtr", "accept_ra_from_local", "accept_ra_min_hop_limit",
    "accept_ra_mtu", "accept_ra_pinfo", "accept_ra_rt_info_max_plen", "accept_ra_rtr_pref", "accept_redirects",
    "accept_source_route", "autoconf", "dad_transmits", "disable_ipv6", "drop_unicast_in_l2_multicast",
    "drop_unsolicited_na", "force_mld_version", "force_tllao", "forwarding", "hop_limit",
    "ignore_routes_with_linkdown", "keep_addr_on_down", "max_addresses", "max_desync_factor",
    "mldv1_unsolicited_report_interval", "mldv2_unsolicited_report_interval", "mtu", "ndisc_notify",
    "optimistic_dad", "proxy_ndp", "regen_max_retry", "router_probe_interval", "router_solicitation_delay",
    "router_solicitation_interval", "router_solicitations", "stable_secret", "suppress_frag_ndisc",
    "temp_prefered_lft", "temp_valid_lft", "use_oif_addrs_only", "use_optimistic", "use_tempaddr",
)
STRING_CONFS = ("stable_secret",)
UNIX_CONFS = ("max_dgram_qlen",)
PING_GROUP_RANGE_DEFAULT = "1\t0"
CTL_STR, CTL_32 = 5, 6

#: criu's lock of a dumped namespace, fed to iptables-restore -w --noflush (and ip6tables-restore)
LOCK_SCRIPT = ("*filter\n:CRIU - [0:0]\n-I INPUT -j CRIU\n-I OUTPUT -j CRIU\n"
               "-A CRIU -m mark --mark 0xC114 -j ACCEPT\n-A CRIU -j DROP\nCOMMIT\n")
UNLOCK_SCRIPT = "*filter\n:CRIU - [0:0]\n-D INPUT -j CRIU\n-D OUTPUT -j CRIU\n-X CRIU\nCOMMIT\n"


# ------------------------------------------------------------------------------ being in a namespace


def setns(fd: int) -> None:
    """The calling thread into net namespace fd (only its thread: fine for a threaded process)."""
    linux_setns(fd, CLONE_NEWNET)


@contextlib.contextmanager
def inside(ns_fd: int) -> Iterator[None]:
    """The calling thread (and what it runs) in the net namespace ns_fd, then back in its own."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        setns(ns_fd)
        try:
            yield
        finally:
            setns(own)
    finally:
        os.close(own)


def open_ns(pid: int) -> int:
    try:
        return os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise SpiceError("dump", f"task {pid}: can't open its net namespace: {e.strerror}") from None


@contextlib.contextmanager
def inside_pid(pid: int) -> Iterator[None]:
    fd = open_ns(pid)
    try:
        with inside(fd):
            yield
    finally:
        os.close(fd)


def tree_ns(ctx: DumpContext) -> tuple[int, int] | None:
    """(net ns id, root pid) of the tree's own net namespace; None when it shares ours."""
    return ctx.ids.own_ns("net")


def socket_in(ctx: DumpContext, family: int, typ: int, proto: int) -> socket.socket:
    """A socket made in the tree's net namespace (sock_diag lists the sockets of the namespace its
    netlink socket lives in)."""
    own = tree_ns(ctx)
    if own is None:
        return socket.socket(family, typ, proto)
    with inside_pid(own[1]):
        return socket.socket(family, typ, proto)


# ------------------------------------------------------------------------------ the lock


def _run_in(ns_fd: int, argv: list[str], stdin: str | None = None, out: int | None = None) -> Any:
    import subprocess

    with inside(ns_fd):
        return subprocess.run(argv, input=stdin.encode() if stdin is not None else None,
                              stdin=None if stdin is not None else subprocess.DEVNULL,
                              stdout=out if out is not None else subprocess.PIPE, stderr=subprocess.PIPE)


def ipv6() -> bool:
    return os.path.exists("/proc/sys/net/ipv6")


def iptables_restore(ns_fd: int, script: str, what: str) -> None:
    """Feed script to iptables-restore (and ip6tables-restore) inside the namespace, as criu."""
    for tool in ("iptables-restore", "ip6tables-restore") if ipv6() else ("iptables-restore",):
        path = shutil.which(tool)
        if path is None:
            raise SpiceError("network-lock", f"{tool} not found: cannot {what} the tree's net namespace "
                                             "(install iptables, or use --network-lock skip)")
        r = _run_in(ns_fd, [path, "-w", "--noflush"], stdin=script)
        if r.returncode:
            raise SpiceError("network-lock", f"{tool} -w --noflush ({what} the tree's net namespace): "
                                             f"{r.stderr.decode(errors='replace').strip() or f'exit {r.returncode}'}")


def nft_lock_script(table: str) -> str:
    """criu's nftables lock of a dumped namespace: table inet CRIU-<run id>, whose input and output
    chains drop every packet not marked 0xC114."""
    out = f"add table inet {table}\n"
    for chain in ("output", "input"):
        out += (f"add chain inet {table} {chain} {{ type filter hook {chain} priority 0; policy drop; }}\n"
                f"add rule inet {table} {chain} meta mark 0xC114 accept\n")
    return out


def nft_run(ns_fd: int, script: str, what: str) -> None:
    path = shutil.which("nft")
    if path is None:
        raise SpiceError("network-lock", f"nft not found: cannot {what} the tree's net namespace")
    r = _run_in(ns_fd, [path, "-f", "-"], stdin=script)
    if r.returncode:
        raise SpiceError("network-lock", f"nft ({what} the tree's net namespace): "
                                         f"{r.stderr.decode(errors='replace').strip() or f'exit {r.returncode}'}")


def ns_unlock(ns_fd: int, method: str, table: str) -> None:
    """Remove the lock of a namespace (method iptables: criu's CRIU chain; nftables: the table)."""
    if method == "nftables":
        nft_run(ns_fd, f"delete table inet {table}\n", "unlock")
    else:
        iptables_restore(ns_fd, UNLOCK_SCRIPT, "unlock")


class NetnsLock:
    """criu's network_lock_internal() for a dumped namespace: every packet not marked dropped
    (method iptables or nftables; table: the nftables lock table's name)."""

    def __init__(self, pid: int, method: str, table: str) -> None:
        self.fd = open_ns(pid)
        self.method, self.table = method, table
        self.locked = False

    def lock(self) -> None:
        if self.method == "nftables":
            nft_run(self.fd, nft_lock_script(self.table), "lock")
        else:
            iptables_restore(self.fd, LOCK_SCRIPT, "lock")
        self.locked = True
        log.info(f"net: Lock network (the tree's net namespace, {self.method})")

    def unlock(self) -> None:
        if self.locked:
            try:
                ns_unlock(self.fd, self.method, self.table)
            except SpiceError as e:
                log.warn("network-lock", e.message)
            self.locked = False
            log.info("net: Unlock network (the tree's net namespace)")

    def close(self) -> None:
        os.close(self.fd)


# ------------------------------------------------------------------------------ the images


def _sysctl(path: str, string: bool) -> object:
    e = codec.pb("sysctl_entry", lite=True)(type=CTL_STR if string else CTL_32)
    try:
        with open(f"/proc/sys/net/{path}") as f:
            text = f.read()
    except OSError:
        return e  # missing (or stable_secret never set: EIO): type only, as criu writes it
    if string:
        e.sarg = text  # as read, its newline included (criu's sysctl_op)
    else:
        try:
            e.iarg = int(text.split()[0])
        except (ValueError, IndexError):
            pass
    return e


def _confs(proto: str, dev: str) -> list:
    names = DEVCONFS4 if proto == "ipv4" else DEVCONFS6
    return [_sysctl(f"{proto}/conf/{dev}/{n}", n in STRING_CONFS) for n in names]


def _netns_entry() -> object:
    e = codec.pb("netns_entry", lite=True)()
    e.def_conf4.extend(_confs("ipv4", "default"))
    e.all_conf4.extend(_confs("ipv4", "all"))
    if ipv6():
        e.def_conf6.extend(_confs("ipv6", "default"))
        e.all_conf6.extend(_confs("ipv6", "all"))
    unix = [_sysctl(f"unix/{n}", False) for n in UNIX_CONFS]
    if any(u.HasField("iarg") for u in unix):
        e.unix_conf.extend(unix)
    ping = _sysctl("ipv4/ping_group_range", True)
    if ping.HasField("sarg") and ping.sarg.split() == PING_GROUP_RANGE_DEFAULT.split():
        ping.ClearField("sarg")  # criu: "The ping_group_range is set to default, skipping it."
    e.ipv4_sysctl.append(ping)
    return e


def links() -> list[tuple[int, int, int, dict[int, bytes]]]:
    """(ifindex, ARPHRD type, flags, attributes) of every link of the current namespace."""
    req = struct.pack("=IHHIIB3x", 20, RTM_GETLINK, netlink.NLM_F_REQUEST | netlink.NLM_F_DUMP, 1, 0,
                      socket.AF_PACKET)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0) as nl:  # NETLINK_ROUTE
        nl.settimeout(5)
        out = []
        for body in netlink.request(nl, req):
            _fam, typ, index, flags = struct.unpack_from("=BxHiI", body)
            out.append((index, typ, flags, netlink.attributes(body, 16)))
    return out


def _kind(attrs: dict[int, bytes]) -> str:
    info = netlink.attributes(attrs.get(IFLA_LINKINFO, b""), 0)
    return info.get(IFLA_INFO_KIND, b"?").rstrip(b"\0").decode(errors="replace")


def _netdev_entries(ns_id: int) -> list:
    out = []
    for index, typ, flags, attrs in links():
        name = _loopback_name(index, typ, attrs)
        e = codec.pb("net_device_entry", lite=True)(type=1, ifindex=index, flags=flags, name=name,
                                                    mtu=struct.unpack("=I", attrs[IFLA_MTU])[0])
        e.conf4.extend(_confs("ipv4", name))
        if ipv6():
            e.conf6.extend(_confs("ipv6", name))
        e.peer_ifindex = struct.unpack("=I", attrs[IFLA_LINK])[0] if IFLA_LINK in attrs else index
        if IFLA_LINK_NETNSID not in attrs:  # a peer in another namespace: none for loopback
            e.peer_nsid = ns_id
        out.append(e)
    return out


def _raw(ctx: DumpContext, ns_fd: int, name: str, argv: list[str], required: bool = True) -> None:
    """The output of argv run inside the namespace, as the raw image name (criu's run_ip_tool...)."""
    tool = shutil.which(argv[0])
    if tool is None:
        if required:
            raise SpiceError("dump", f"{argv[0]} not found: needed to dump the tree's net namespace ({name})")
        return
    path = ctx.images.file(name)
    with open(path, "wb") as f:
        r = _run_in(ns_fd, [tool, *argv[1:]], out=f.fileno())
    if r.returncode:
        raise SpiceError("dump", f"{' '.join(argv)} in the tree's net namespace: "
                                 f"{r.stderr.decode(errors='replace').strip() or f'exit {r.returncode}'}")


def _iptables_nft() -> bool:
    """Whether iptables is the nf_tables one (then its rules are in `nft list ruleset`, and criu
    saves the legacy tables alone with iptables-legacy-save)."""
    import subprocess

    tool = shutil.which("iptables-save")
    if tool is None:
        return False
    r = subprocess.run([tool, "--version"], stdin=subprocess.DEVNULL, capture_output=True, text=True)
    return "nf_tables" in r.stdout


def _loopback_name(index: int, typ: int, attrs: dict[int, bytes]) -> str:
    """The name of a loopback link; any other kind (veth, tun, macvlan...) is refused naming it."""
    name = attrs.get(IFLA_IFNAME, b"").rstrip(b"\0").decode(errors="replace")
    if typ != ARPHRD_LOOPBACK:
        raise SpiceError("dump", f"network device {name} (index {index}, kind {_kind(attrs)}) in the tree's "
                                 "net namespace: not supported (only loopback)")
    return name


def check_links(pid: int) -> None:
    """Refuse a namespace with links other than loopback before anything is touched."""
    with inside_pid(pid):
        for index, typ, _flags, attrs in links():
            _loopback_name(index, typ, attrs)


def dump(ctx: DumpContext, ns_id: int, pid: int) -> None:
    """Write the images of the tree's net namespace (ns_id), entered through the root task pid."""
    ino = os.stat(f"/proc/{pid}/ns/net").st_ino
    for ext in ctx.opts.external:
        if ext.startswith(f"net[{ino}]"):
            raise SpiceError("dump", f"the tree's net namespace is external ({ext}): not supported "
                                     "(spice cannot restore a tree into a namespace it is given)")
    empty = getattr(ctx.opts, "empty_ns", 0) & CLONE_NEWNET  # criu's --empty-ns net (runc always asks it)
    log.info(f"Dump NET namespace info {ns_id} via {pid}")
    if not empty:
        check_links(pid)
    if ctx.opts.network_lock != "skip":
        ctx.tcp.netns_lock(pid)  # before the tables are saved: they hold the lock, as criu's do
    if empty:  # locked all the same (criu too), but nothing of it in the images
        log.info("net: the tree's net namespace is left empty (--empty-ns net): no image of it")
        return
    fd = open_ns(pid)
    try:
        with inside(fd):
            for e in _netdev_entries(ns_id):
                ctx.images.add(f"netdev-{ns_id}.img", "NETDEV", e)
        _raw(ctx, fd, f"ifaddr-{ns_id}.img", ["ip", "addr", "save"])
        _raw(ctx, fd, f"route-{ns_id}.img", ["ip", "route", "save"])
        _raw(ctx, fd, f"route6-{ns_id}.img", ["ip", "-6", "route", "save"])
        _raw(ctx, fd, f"rule-{ns_id}.img", ["ip", "rule", "save"])
        nft = _iptables_nft()
        suffix = "-legacy-save" if nft else "-save"
        _raw(ctx, fd, f"iptables-{ns_id}.img", [f"iptables{suffix}"], required=not nft)
        if ipv6():
            _raw(ctx, fd, f"ip6tables-{ns_id}.img", [f"ip6tables{suffix}"], required=not nft)
        if shutil.which("nft"):
            _raw(ctx, fd, f"nftables-{ns_id}.img", ["nft", "list", "ruleset"])
        with inside(fd):
            ctx.images.add(f"netns-{ns_id}.img", "NETNS", _netns_entry())
    finally:
        os.close(fd)
