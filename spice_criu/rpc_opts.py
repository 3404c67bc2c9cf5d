# SPDX-License-Identifier: MIT
"""criu_opts (an RPC request's options) -> Options, the way criu's setup_opts_from_req reads them.

Directories arrive as fd numbers in the *client's* table (images_dir_fd, work_dir_fd) and are opened
through /proc/<peer pid>/fd/N (the peer from SO_PEERCRED). Options that only matter for namespaces,
mounts or cgroups spice does not dump (it dumps host-namespace trees) are accepted and logged; the
ones that would need something spice lacks (pre-copy, lazy pages, a page server, joining namespaces,
LSM profiles, veth pairs, cgroup properties) are refused with an error that names them, as are
malformed values (criu answers those with cr_errno EBADRQC).
"""

from __future__ import annotations

import os

from .cli import OPTIONS, Options, _fast_parse, _options
from .errors import SpiceError
from .log import log

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: typing costs a swrk process's start-up
    from collections.abc import Callable
    from typing import Any

EBADRQC = 56
CLONE_NEWNET = 0x40000000
#: criu_cg_mode values: the ones that leave cgroups alone (tasks come back in the restorer's cgroups)
CG_IGNORE, CG_NONE, CG_PROPS, CG_SOFT, CG_FULL, CG_STRICT, CG_DEFAULT = range(7)
CG_NAMES = {CG_PROPS: "props", CG_FULL: "full", CG_STRICT: "strict"}
NETWORK_LOCK = {1: "iptables", 2: "nftables", 3: "skip"}
LOG_FILE = "criu.log"  # criu's default log name in RPC mode


class BadOptions(SpiceError):
    """A request criu would reject while reading its options (cr_errno EBADRQC)."""

    errno = EBADRQC

    def __init__(self, message: str) -> None:
        super().__init__("rpc", message)


class RpcOptions:
    """What a request asks beyond Options: the command to exec after a restore (criu's exec_cmd)."""

    def __init__(self, o: Options, exec_cmd: list[str]) -> None:
        self.o = o
        self.exec_cmd = exec_cmd


def peer_dir(peer: int, fd: int, what: str) -> str:
    """A directory the client holds open as fd: a path naming the same directory for us.

    The client's own path when it names that very directory here (same mount namespace and root),
    else /proc/self/fd/M of a descriptor we keep open (a deleted or foreign-namespace directory)."""
    src = f"/proc/{peer}/fd/{fd}"
    try:
        dfd = os.open(src, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise BadOptions(f"Can't open {what} {src} (client fd {fd}): {e.strerror}") from None
    st = os.fstat(dfd)
    try:
        path = os.readlink(src)
        lst = os.stat(path)
        if path.startswith("/") and (lst.st_dev, lst.st_ino) == (st.st_dev, st.st_ino):
            os.close(dfd)
            return path
    except OSError:
        pass
    return f"/proc/self/fd/{dfd}"


def _refuse(what: str, why: str) -> None:
    raise SpiceError("rpc", f"{what}: {why}")


def _check_unsupported(ro: Any, kind: str, swrk: bool) -> None:
    """Options spice cannot honour: refuse them by name rather than quietly do something else."""
    if ro.track_mem or ro.HasField("parent_img"):
        raise BadOptions("Tracking memory is not available (no soft-dirty tracking in spice): "
                         "omit track_mem/parent_img (pre-dump and incremental dumps are not supported)")
    if ro.HasField("empty_ns") and ro.empty_ns & ~CLONE_NEWNET:
        raise BadOptions(f"empty_ns 0x{ro.empty_ns:x}: only CLONE_NEWNET may be left empty")
    if (ro.rst_sibling or len(ro.inherit_fd)) and not swrk:
        raise BadOptions("rst_sibling and inherit_fd are only allowed in swrk mode")
    if ro.lazy_pages:
        _refuse("lazy_pages", "spice has no lazy-pages daemon; restore the pages eagerly")
    if ro.HasField("ps") and (ro.ps.HasField("address") or ro.ps.HasField("port") or ro.ps.HasField("fd")):
        _refuse("ps (page server)", "spice writes images locally and has no page server")
    if ro.tls:
        _refuse("tls", "spice has no page server to secure")
    if len(ro.join_ns):
        _refuse("join_ns", f"spice does not join existing namespaces ({', '.join(j.ns for j in ro.join_ns)})")
    if len(ro.veths):
        _refuse("veths", "spice does not restore network namespaces or veth pairs")
    for name in ("lsm_profile", "lsm_mount_context"):
        if ro.HasField(name) and getattr(ro, name):
            _refuse(name, "spice does not set LSM profiles or mount contexts")
    mode = _cg_mode(ro)
    if mode in CG_NAMES:
        _refuse(f"manage_cgroups_mode {CG_NAMES[mode]}", "spice restores cgroup properties only of the cgroups "
                "it creates (modes soft, none, ignore)")
    if kind == "dump" and ro.HasField("freeze_cgroup"):
        fc = ro.freeze_cgroup
        if not (os.path.exists(os.path.join(fc, "cgroup.freeze")) or os.path.exists(os.path.join(fc, "freezer.state"))):
            raise SpiceError("rpc", f"freeze_cgroup {fc}: neither a cgroupv1 (freezer.state) nor a cgroupv2 "
                                    "(cgroup.freeze) control file found")


def _cg_mode(ro: Any) -> int:
    """criu's: manage_cgroups_mode, else manage_cgroups (true: soft, false: ignore), else soft."""
    if ro.HasField("manage_cgroups_mode"):
        return ro.manage_cgroups_mode
    if ro.HasField("manage_cgroups"):
        return CG_SOFT if ro.manage_cgroups else CG_IGNORE
    return CG_DEFAULT


_CG_MODE_NAMES = {CG_IGNORE: "ignore", CG_NONE: "none", CG_SOFT: "soft", CG_DEFAULT: "soft"}


def note_harmless(ro: Any, kind: str) -> None:
    """Options that change nothing for host-namespace trees: logged (once the request's log is open) so
    the log tells what was asked."""
    notes = []
    if ro.auto_ext_mnt or ro.ext_sharing or ro.ext_masters or len(ro.skip_mnt) or len(ro.enable_fs) \
            or ro.mntns_compat_mode:
        notes.append("mount options (auto_ext_mnt, skip_mnt, enable_fs...): not used by spice")
    if ro.HasField("cgroup_props") or ro.HasField("cgroup_props_file") or len(ro.cgroup_dump_controller) \
            or ro.HasField("cgroup_yard"):
        notes.append("cgroup_props, cgroup_dump_controller, cgroup_yard: spice dumps criu's default properties "
                     "and uses the host's cgroup mounts")
    if ro.HasField("freeze_cgroup"):
        notes.append(f"freeze_cgroup {ro.freeze_cgroup}: the tree is frozen with ptrace instead")
    if ro.HasField("empty_ns"):
        notes.append("empty_ns CLONE_NEWNET: no network namespace is dumped or restored")
    if ro.auto_dedup:
        notes.append("auto_dedup: images are not deduplicated")
    if ro.HasField("status_fd"):
        notes.append("status_fd: obsolete (no page server or lazy pages to report readiness of)")
    for e in ro.external:
        if not e.startswith(("net[", "pid[", "mnt[")):
            notes.append(f"external {e}: not used by spice {kind}")
    for n in notes:
        log.info(f"RPC: {n}")


def _apply_config(o: Options, path: str) -> None:
    """criu applies a request's config_file after the RPC options (a missing file is no error).
    Each line is a long option without its dashes; options spice does not know are logged and skipped."""
    import shlex
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return
    except OSError as e:
        raise SpiceError("rpc", f"config_file {path}: {e.strerror}") from None
    defaults = {opt.name: (() if opt.kind == "multi" else opt.default) for opt in OPTIONS}
    for n, line in enumerate(lines, 1):
        try:
            words = shlex.split(line, comments=True)
        except ValueError as e:
            raise SpiceError("rpc", f"config_file {path}:{n}: {e}") from None
        if not words:
            continue
        kw = _fast_parse([o.action or "dump", "--" + words[0].lstrip("-"), *words[1:]])
        if kw is None:
            log.warn("rpc", f"config_file {path}:{n}: option {words[0]!r} is not known to spice, ignored")
            continue
        given = _options(kw)
        for name in Options.__fields__:
            opt_default = defaults.get(name, getattr(Options, name, None))
            if name in kw and kw[name] != opt_default:
                setattr(o, name, getattr(given, name))
        if kw["verbosity"] is not None:
            o.verbosity = given.verbosity
        if kw["ext_unix_sk"] is not None:
            o.ext_unix_sk = given.ext_unix_sk


def options_from_req(kind: str, ro: Any, peer: int, swrk: bool,
                     ready: Callable[[Options], None] | None = None) -> RpcOptions:
    """kind: "dump", "restore" or "check"; ro: the request's criu_opts; peer: the client's pid.

    ready(o) runs once the directories and the log settings are known (to open the log), before the
    options spice cannot honour are refused, so those refusals are in the request's log."""
    if ro.HasField("log_file") and "/" in ro.log_file:
        raise BadOptions(f"log_file {ro.log_file!r}: no subdirs are allowed in the log file name")
    o = Options(action=kind)
    if ro.images_dir_fd >= 0:
        o.images_dir = peer_dir(peer, ro.images_dir_fd, "images directory")
    elif ro.HasField("images_dir") and ro.images_dir:
        o.images_dir = ro.images_dir
        if not os.path.isdir(o.images_dir):
            raise BadOptions(f"images_dir {o.images_dir} is not a directory")
    elif kind != "check":
        raise BadOptions("Neither images_dir_fd nor images_dir was passed by RPC client")
    o.work_dir = peer_dir(peer, ro.work_dir_fd, "work directory") if ro.HasField("work_dir_fd") else o.images_dir
    if kind == "dump":
        o.tree = ro.pid if ro.HasField("pid") else peer
    for name in ("leave_running", "leave_stopped", "shell_job", "tcp_established", "tcp_close", "ext_unix_sk",
                 "file_locks", "link_remap", "display_stats"):
        setattr(o, name, bool(getattr(ro, name)))
    o.skip_in_flight = bool(ro.tcp_skip_in_flight)
    if len(ro.unix_sk_ino):
        o.ext_unix_sk = True
    if ro.HasField("timeout") and ro.timeout:
        o.timeout = ro.timeout
    if ro.HasField("ghost_limit"):
        o.ghost_limit = ro.ghost_limit
    if ro.HasField("network_lock"):
        o.network_lock = NETWORK_LOCK.get(ro.network_lock, "iptables")
    o.external = list(ro.external) + [f"mnt[{m.key}]:{m.val}" for m in ro.ext_mnt]  # criu's ext_mnt: mnt[K]:V
    if ro.HasField("root") and ro.root not in ("", "/"):
        o.root = ro.root  # the tree's mount namespace is built on it (restore/mntns.py); unused without one
    o.inherit_fd = [f"fd[{i.fd}]:{i.key}" for i in ro.inherit_fd]
    if kind == "restore":
        o.restore_detached = True  # criu forces it for RPC: the reply carries the pid
        o.restore_sibling = bool(ro.rst_sibling)
        o.cgroup_root = [f"{r.ctrl}:{r.path}" if r.HasField("ctrl") and r.ctrl else r.path for r in ro.cg_root]
    o.manage_cgroups = _CG_MODE_NAMES.get(_cg_mode(ro))  # dump: ignore walks no cgroup directory
    o.verbosity = ro.log_level
    if ro.log_to_stderr:
        o.log_file = None
    elif ro.HasField("log_file") and ro.log_file:
        o.log_file = ro.log_file
    elif kind != "check" or ro.images_dir_fd >= 0 or ro.HasField("images_dir"):
        o.log_file = LOG_FILE
    if ro.HasField("config_file") and ro.config_file:
        _apply_config(o, ro.config_file)
    if ready is not None:
        ready(o)
    _check_unsupported(ro, kind, swrk)
    return RpcOptions(o, list(ro.exec_cmd))
