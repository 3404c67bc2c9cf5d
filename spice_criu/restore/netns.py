# SPDX-License-Identifier: MIT
"""The tree's own network namespace, filled again from CRIU's images (mirror of dump/netns.py).

The root was cloned with CLONE_NEWNET; right after it exists the restorer enters that namespace
and stays there until the restore ends (so every socket it makes for the tree lives in it), then
goes back to its own. Inside, in criu's order: each link of netdev-<id>.img (loopback only; other
kinds are refused naming them) gets its flags (up) and MTU and its IPv4/IPv6 settings that differ
from the namespace's defaults; the namespace's `all` and `default` settings, net.unix.* and
net.ipv4.ping_group_range (netns-<id>.img); then `ip addr restore`, `ip route restore` (IPv4 and
IPv6), `ip rule restore` (after flushing the default rules, as criu), the legacy iptables tables
and `nft -f` of the nftables ruleset. A dump's network lock (criu's CRIU chain, saved with the
tables) is removed once every task is complete, before any resumes, as criu's network_unlock.
Without netns-<id>.img (a dump made with --empty-ns net, as runc asks) the namespace stays empty.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import struct
import subprocess

from ..dump.netns import CLONE_NEWNET, DEVCONFS4, DEVCONFS6, ipv6, ns_unlock, setns
from ..errors import SpiceError
from ..log import log
from ..netfilter import nft_lock_table

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .files import OpenContext
    from .plan import RestorePlan
    from .task import TaskCtl

LOOPBACK = 1
#: netdev.proto's nd_type names
ND_TYPES = {1: "LOOPBACK", 2: "VETH", 3: "TUN", 4: "EXTLINK", 5: "VENET", 6: "BRIDGE", 7: "MACVLAN", 8: "SIT"}
SIOCGIFFLAGS, SIOCSIFFLAGS, SIOCSIFMTU = 0x8913, 0x8914, 0x8922
IFF_UP = 0x1


def setup(plan: RestorePlan, root: TaskCtl, ctx: OpenContext) -> None:
    """Enter the root's new net namespace (for good, until the restore ends) and fill it."""
    ns_id = plan.own_ns["net"]
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(f"/proc/{root.pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        os.close(own)
        raise SpiceError("restore", f"task {root.pid}: can't open its net namespace: {e.strerror}") from None

    def leave() -> None:
        try:
            setns(own)
        finally:
            os.close(own)
            os.close(target)

    setns(target)
    ctx.cleanup.append(leave)  # back to ours when the restore ends, whatever happened
    imgdir = plan.imgdir
    name = f"netns-{ns_id}.img"
    if not imgdir.exists(name):
        log.info(f"No {name} image: the tree's net namespace stays empty")
        return
    if getattr(ctx.options, "empty_ns", 0) & CLONE_NEWNET:  # criu's --empty-ns net
        log.info("net: the tree's net namespace is left empty (--empty-ns net)")
        return
    log.info(f"net: restoring net namespace {ns_id} in task {root.pid}")
    netns = imgdir.one(name)
    for nde in imgdir.entries(f"netdev-{ns_id}.img"):
        _link(nde, netns)
    _netns_conf(netns)
    for kind, img in (("addr", "ifaddr"), ("route", "route"), ("route", "route6")):
        _ip_restore(plan, kind, f"{img}-{ns_id}.img")
    rule = f"rule-{ns_id}.img"
    if _has_data(plan, rule):
        _tool(["ip", "rule", "flush"], check=False)  # the kernel's default rules, else doubled
        _tool(["ip", "rule", "delete", "table", "local"], check=False)
        _ip_restore(plan, "rule", rule)
    _tables(plan, ns_id)
    if _locked(plan, ns_id):
        inv = plan.inventory
        method = "nftables" if inv.HasField("network_lock_method") and inv.network_lock_method == 1 else "iptables"
        table = nft_lock_table(inv.dump_criu_run_id) if inv.dump_criu_run_id else ""
        ctx.when_complete(lambda: _unlock(target, method, table))


# ------------------------------------------------------------------------------ links and settings


def _link(nde: Any, netns: Any) -> None:
    if nde.type != LOOPBACK:
        kind = ND_TYPES.get(nde.type, str(nde.type))
        raise SpiceError("restore", f"network device {nde.name} (index {nde.ifindex}, {kind}) in the tree's net "
                                    "namespace: not supported (only loopback)")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        name = nde.name.encode()[:15]
        try:
            fcntl.ioctl(s.fileno(), SIOCSIFMTU, struct.pack("16si20x", name, nde.mtu))
            cur = struct.unpack_from("16sH", fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, struct.pack("16s24x", name)))[1]
            want = (cur & ~IFF_UP) | (nde.flags & IFF_UP)
            fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack("16sH22x", name, want))
        except OSError as e:
            raise SpiceError("restore", f"network device {nde.name}: setting its flags and mtu: {e.strerror}") from None
    _confs("ipv4", nde.name, list(nde.conf4), list(netns.def_conf4), DEVCONFS4)
    _confs("ipv6", nde.name, list(nde.conf6), list(netns.def_conf6), DEVCONFS6)


def _same(a: Any, b: Any) -> bool:
    if a.type != b.type:
        return False
    if a.HasField("iarg") and b.HasField("iarg"):
        return a.iarg == b.iarg
    return a.HasField("sarg") and b.HasField("sarg") and a.sarg == b.sarg


def _confs(proto: str, dev: str, conf: list, defaults: list | None, names: tuple[str, ...]) -> None:
    """Write the device's settings, as criu: those equal to the default skipped (but mtu),
    accept_redirects last; each only when the namespace does not hold that value already."""
    todo = []
    for i, e in enumerate(conf[: len(names)]):
        n = names[i]
        if defaults and i < len(defaults) and _same(e, defaults[i]) and n != "mtu":
            continue
        value = str(e.iarg) if e.HasField("iarg") else e.sarg if e.HasField("sarg") else None
        if value is not None:
            todo.append((n, value))
    todo.sort(key=lambda nv: nv[0] == "accept_redirects")
    for n, value in todo:
        _write_sysctl(f"{proto}/conf/{dev}/{n}", value)


def _write_sysctl(path: str, value: str) -> None:
    full = f"/proc/sys/net/{path}"
    try:
        with open(full) as f:
            if f.read().strip().split() == value.split():
                return
    except OSError:
        pass  # stable_secret reads EIO until set
    try:
        with open(full, "w") as f:
            f.write(value)
    except OSError as e:
        raise SpiceError("restore", f"net.{path.replace('/', '.')} = {value}: {e.strerror}") from None


def _netns_conf(netns: Any) -> None:
    _confs("ipv4", "all", list(netns.all_conf4), None, DEVCONFS4)
    _confs("ipv4", "default", list(netns.def_conf4), None, DEVCONFS4)
    if ipv6():
        _confs("ipv6", "all", list(netns.all_conf6), None, DEVCONFS6)
        _confs("ipv6", "default", list(netns.def_conf6), None, DEVCONFS6)
    for e, n in zip(netns.unix_conf, ("max_dgram_qlen",), strict=False):
        if e.HasField("iarg"):
            _write_sysctl(f"unix/{n}", str(e.iarg))
    for e in netns.ipv4_sysctl[:1]:
        if e.HasField("sarg"):
            _write_sysctl("ipv4/ping_group_range", e.sarg)


# ------------------------------------------------------------------------------ the raw images


def _has_data(plan: RestorePlan, name: str) -> bool:
    return plan.imgdir.exists(name) and os.path.getsize(plan.imgdir.file(name)) > 0


def _tool(argv: list[str], stdin_path: str | None = None, check: bool = True) -> None:
    path = shutil.which(argv[0])
    if path is None:
        raise SpiceError("restore", f"{argv[0]} not found: needed to restore the tree's net namespace")
    with open(stdin_path or os.devnull, "rb") as f:
        r = subprocess.run([path, *argv[1:]], stdin=f, capture_output=True)
    if r.returncode and check:
        what = f" < {os.path.basename(stdin_path)}" if stdin_path else ""
        raise SpiceError("restore", f"{' '.join(argv)}{what} in the tree's net namespace: "
                                    f"{r.stderr.decode(errors='replace').strip() or f'exit {r.returncode}'}")


def _ip_restore(plan: RestorePlan, kind: str, name: str) -> None:
    if _has_data(plan, name):
        _tool(["ip", kind, "restore"], plan.imgdir.file(name))


def _iptables_nft() -> bool:
    tool = shutil.which("iptables-save")
    if tool is None:
        return False
    r = subprocess.run([tool, "--version"], stdin=subprocess.DEVNULL, capture_output=True, text=True)
    return "nf_tables" in r.stdout


def _tables(plan: RestorePlan, ns_id: int) -> None:
    suffix = "-legacy-restore" if _iptables_nft() else "-restore"
    for tool, img in (("iptables", "iptables"), ("ip6tables", "ip6tables")):
        name = f"{img}-{ns_id}.img"
        if _has_data(plan, name):
            _tool([f"{tool}{suffix}", "-w"], plan.imgdir.file(name))
    name = f"nftables-{ns_id}.img"
    if _has_data(plan, name):
        _tool(["nft", "-f", plan.imgdir.file(name)])


def _locked(plan: RestorePlan, ns_id: int) -> bool:
    """Whether the tables restored hold criu's lock of the namespace (its CRIU chain)."""
    for img in ("nftables", "iptables", "ip6tables"):
        name = f"{img}-{ns_id}.img"
        if _has_data(plan, name):
            with open(plan.imgdir.file(name), "rb") as f:
                if b"CRIU" in f.read():
                    return True
    return False


def _unlock(ns_fd: int, method: str, table: str) -> None:
    """criu's network_unlock for a restored namespace: the CRIU chain and its jumps removed (the
    lock table, for a dump made with --network-lock nftables)."""
    try:
        ns_unlock(ns_fd, method, table)
    except SpiceError as e:
        log.warn("network-lock", f"could not remove the dump's lock of the tree's net namespace: {e.message}")
        return
    log.info("net: Unlock network (the tree's net namespace)")
