# SPDX-License-Identifier: MIT
"""spice as `criu` over RPC, driven by real pycriu (CRIU 4.2.1's own client), next to real `criu swrk`.

spice is installed as `criu` by `make install-criu-shim` into a session directory, and pycriu execs
it exactly as it execs criu (`criu swrk <fd>` with fds 0-2 closed). Dumps and restores of the
harness workloads must continue (harness.assert_continues); rst_sibling restores come back as this
test's own child; the NOTIFY sequence, VERSION/FEATURE_CHECK answers and the answers to bad
requests are compared with real CRIU's on the same machine in the same run.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import harness
import pytest

REPO = Path(__file__).resolve().parent.parent
PYCRIU_DIR = Path(os.environ.get("CRIU4_PREFIX", "/opt/criu4")) / "usr/lib/python3/dist-packages"
CLONE_NEWNET = 0x40000000


# ------------------------------------------------------------------------------------------ fixtures


def load_pycriu() -> Any:
    """Real pycriu of CRIU 4.2.1 (installed with it by install-criu.sh); fails the test if missing."""
    if str(PYCRIU_DIR) not in sys.path:
        sys.path.append(str(PYCRIU_DIR))
    try:
        import pycriu as mod
    except ImportError as e:
        pytest.fail(f"pycriu of CRIU 4.2.1 is missing under {PYCRIU_DIR}: {e}", pytrace=False)
    return mod


@pytest.fixture(scope="session")
def pycriu(criu_bin: Path) -> Any:
    return load_pycriu()


def install_criu_shim(shim_dir: Path) -> Path:
    """spice installed as `criu` the way users do it: `make install-criu-shim CRIU_SHIM_DIR=...`."""
    p = subprocess.run(["make", "-s", "--no-print-directory", "install-criu-shim", f"CRIU_SHIM_DIR={shim_dir}"],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, f"make install-criu-shim failed:\n{p.stdout}\n{p.stderr}"
    shim = shim_dir / "criu"
    assert os.access(shim, os.X_OK), p.stdout
    return shim


@pytest.fixture(scope="session")
def spice_criu(compat_tmp: Path) -> Path:
    return install_criu_shim(compat_tmp / "criu-shim")


# ------------------------------------------------------------------------------------------ client


class Session:
    """One swrk session over pycriu's own transport (pycriu.criu._criu_comm_bin: socketpair, fork,
    close 0-2, exec `<binary> swrk <fd>`), answering NOTIFYs through `answer(script, pid, swrk_pid)`."""

    def __init__(self, pycriu: Any, binary: Path | str) -> None:
        self.pycriu = pycriu
        self.binary = str(binary)
        self.notes: list[tuple[str, int | None]] = []
        self.exit_code: int | None = None
        self.swrk_pid = 0

    def request(self, req: Any, answer: Callable[[str, int | None, int], bool] | None = None,
                timeout: float = 120) -> Any:
        comm = sys.modules["pycriu.criu"]._criu_comm_bin(self.binary)
        sk = comm.connect(False)
        self.swrk_pid = comm.swrk
        sk.settimeout(harness.scaled(timeout))
        resp = None
        try:
            sk.send(req if isinstance(req, bytes) else req.SerializeToString())
            while True:
                size = len(sk.recv(1, socket.MSG_TRUNC | socket.MSG_PEEK))
                data = sk.recv(size) if size else b""
                if not data:
                    break
                resp = self.pycriu.rpc.criu_resp()
                resp.ParseFromString(data)
                if resp.type != self.pycriu.rpc.NOTIFY:
                    break
                n = resp.notify
                pid = n.pid if n.HasField("pid") else None
                self.notes.append((n.script, pid))
                ok = answer(n.script, pid, comm.swrk) if answer else True
                sk.send(self.pycriu.rpc.criu_req(type=self.pycriu.rpc.NOTIFY, notify_success=ok).SerializeToString())
        finally:
            sk.close()
            _, status = os.waitpid(comm.swrk, 0)
            self.exit_code = os.waitstatus_to_exitcode(status)
        return resp


def _opts(pycriu: Any, dir_fd: int, **kw: Any) -> Any:
    o = pycriu.rpc.criu_opts(images_dir_fd=dir_fd, log_level=4)
    for k, v in kw.items():
        field = getattr(o, k)
        if isinstance(v, list):
            for item in v:
                if isinstance(item, str | int):
                    field.append(item)
                else:
                    field.add().CopyFrom(item)
        else:
            setattr(o, k, v)
    return o


@contextlib.contextmanager
def dir_fd(path: Path) -> Iterator[int]:
    path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_DIRECTORY)
    try:
        yield fd
    finally:
        os.close(fd)


def pycriu_dump(pycriu: Any, binary: Path, pid: int, images: Path, leave_running: bool = False, **kw: Any) -> Any:
    """A dump through pycriu's high-level API (criu().dump()) with `binary` as criu."""
    c = pycriu.criu()
    c.use_binary(str(binary))
    with dir_fd(images) as fd:
        c.opts = _opts(pycriu, fd, **{"pid": pid, "leave_running": leave_running, "log_file": "dump.log", **kw})
        return c.dump()


def pycriu_restore(pycriu: Any, binary: Path, images: Path, **kw: Any) -> int:
    """A restore through criu().restore() (rst_sibling: the root becomes our child); its pid."""
    c = pycriu.criu()
    c.use_binary(str(binary))
    with dir_fd(images) as fd:
        c.opts = _opts(pycriu, fd, **{"log_file": "restore.log", "rst_sibling": True, **kw})
        return c.restore().pid


def rpc_dumper(pycriu: Any, binary: Path) -> Callable[[int, Path, bool], object]:
    return lambda pid, d, lr: pycriu_dump(pycriu, binary, pid, d, lr)


def _log_tail(images: Path, name: str) -> str:
    return harness.log_tail(images / name) if (images / name).exists() else f"(no {name})"


# ------------------------------------------------------------------------------------------ answers


def test_version_is_criu_4_2_1_like_real_criu(pycriu: Any, spice_criu: Path, criu_bin: Path) -> None:
    answers = []
    for binary in (spice_criu, criu_bin):
        s = Session(pycriu, binary)
        resp = s.request(pycriu.rpc.criu_req(type=pycriu.rpc.VERSION))
        assert (resp.type, resp.success, s.exit_code) == (pycriu.rpc.VERSION, True, 0)
        v = resp.version
        answers.append((v.major_number, v.minor_number, v.sublevel, v.HasField("gitid")))
    assert answers[0] == (4, 2, 1, False)
    assert answers[0] == answers[1]


def test_feature_check_is_honest(pycriu: Any, spice_criu: Path, criu_bin: Path) -> None:
    """mem_track is false (spice has no pre-dump); lazy_pages and pidfd_store answer for the kernel
    exactly as real CRIU does here; every field is present, false when not asked for."""
    for asked in (dict(mem_track=True, lazy_pages=True, pidfd_store=True), {}):
        got = []
        for binary in (spice_criu, criu_bin):
            s = Session(pycriu, binary)
            resp = s.request(pycriu.rpc.criu_req(type=pycriu.rpc.FEATURE_CHECK,
                                                 features=pycriu.rpc.criu_features(**asked)))
            assert (resp.type, resp.success, s.exit_code) == (pycriu.rpc.FEATURE_CHECK, True, 0)
            f = resp.features
            assert all(f.HasField(n) for n in ("mem_track", "lazy_pages", "pidfd_store"))
            got.append((f.mem_track, f.lazy_pages, f.pidfd_store))
        spice, real = got
        assert spice[0] is False
        assert spice[1:] == real[1:], f"asked {asked}: spice {spice} vs criu {real}"
        if not asked:
            assert spice == (False, False, False)


def test_check(pycriu: Any, spice_criu: Path) -> None:
    c = pycriu.criu()
    c.use_binary(str(spice_criu))
    c.check()  # raises CRIUExceptionExternal on success=false


# ------------------------------------------------------------------------------------------ dump + restore


@pytest.mark.parametrize("name", harness.WORKLOADS)
def test_rpc_dump_and_sibling_restore_continue(name: str, pycriu: Any, spice_criu: Path,
                                               workload_factory: Callable[..., harness.Workload]) -> None:
    """pycriu dump -> pycriu restore with rst_sibling, both by spice: the restored root is our child
    (CLONE_PARENT), has its pid, and continues."""
    wl = workload_factory(name)
    images = wl.rundir / "rpc-images"
    info = harness.dump_workload(wl, images, dumper=rpc_dumper(pycriu, spice_criu))
    assert (images / "dump.log").exists() and (images / "stats-dump").exists()
    pid = pycriu_restore(pycriu, spice_criu, images)
    assert pid == info.pid, _log_tail(images, "restore.log")
    assert harness.parent_of(pid) == os.getpid()
    harness.assert_continues(info, pid)
    harness.kill_restored(info, pid)


@pytest.mark.parametrize("name", ["counter", "tree", "threads"])
def test_real_criu_dump_restores_over_spice_rpc(name: str, pycriu: Any, spice_criu: Path,
                                                criu_dumps: dict[str, harness.DumpInfo]) -> None:
    info = criu_dumps[name]
    pid = pycriu_restore(pycriu, spice_criu, info.images_dir, log_file="restore-spice-rpc.log")
    assert pid == info.pid and harness.parent_of(pid) == os.getpid()
    harness.assert_continues(info, pid)
    harness.kill_restored(info, pid)


@pytest.mark.parametrize("name", ["counter", "tree"])
def test_spice_rpc_dump_restores_over_real_criu_rpc(name: str, pycriu: Any, spice_criu: Path, criu_bin: Path,
                                                    workload_factory: Callable[..., harness.Workload]) -> None:
    wl = workload_factory(name)
    images = wl.rundir / "rpc-images"
    info = harness.dump_workload(wl, images, dumper=rpc_dumper(pycriu, spice_criu))
    pid = pycriu_restore(pycriu, criu_bin, images, log_file="restore-criu-rpc.log")
    assert pid == info.pid and harness.parent_of(pid) == os.getpid()
    harness.assert_continues(info, pid)
    harness.kill_restored(info, pid)


def test_leave_running_dump_then_restore_while_running_is_eexist(
        pycriu: Any, spice_criu: Path, workload_factory: Callable[..., harness.Workload]) -> None:
    wl = workload_factory("counter")
    images = wl.rundir / "rpc-images"
    resp = pycriu_dump(pycriu, spice_criu, wl.pid, images, leave_running=True)
    assert not resp.restored
    harness.assert_continues(wl, wl.pid)  # never stopped for good
    with pytest.raises(pycriu.CRIUExceptionExternal) as ei:
        pycriu_restore(pycriu, spice_criu, images)
    assert ei.value.errno == errno.EEXIST and "Process with requested pid already exists" in str(ei.value)
    harness.assert_continues(wl, wl.pid)
    assert harness.descendants(wl.pid) == []  # nothing half-restored next to it


def test_missing_pid_is_esrch(pycriu: Any, spice_criu: Path, tmp_path: Path) -> None:
    with pytest.raises(pycriu.CRIUExceptionExternal) as ei:
        pycriu_dump(pycriu, spice_criu, 4000000, tmp_path / "img")
    assert ei.value.errno == errno.ESRCH and "No process with such pid" in str(ei.value)
    assert "Error (spice/dump): No process with pid 4000000" in (tmp_path / "img" / "dump.log").read_text()


# ------------------------------------------------------------------------------------------ notify


def _stdio_links(swrk: int) -> list[str | None]:
    out: list[str | None] = []
    for fd in (0, 1, 2):
        try:
            out.append(os.readlink(f"/proc/{swrk}/fd/{fd}"))
        except FileNotFoundError:
            out.append(None)  # closed (real criu leaves them so)
    return out


def test_notify_sequence_is_criu_s(pycriu: Any, spice_criu: Path, criu_bin: Path,
                                   workload_factory: Callable[..., harness.Workload]) -> None:
    """The same NOTIFY scripts, in the same order, with the restored root's pid at post-restore, as
    real CRIU sends for the same kind of tree; tasks are stopped at post-restore and run after
    post-resume; the swrk process runs with /dev/null on the 0-2 pycriu closed."""
    seqs = {}
    for tool, binary in (("spice", spice_criu), ("criu", criu_bin)):
        wl = workload_factory("counter")
        images = wl.rundir / f"{tool}-images"
        seen: dict[str, Any] = {}

        def answer(script: str, pid: int | None, swrk: int, seen: dict[str, Any] = seen) -> bool:
            seen.setdefault("stdio", _stdio_links(swrk))
            if script == "post-restore":
                seen["state"] = harness.process_state(pid)
            return True

        dump = Session(pycriu, binary)

        def dumper(pid: int, d: Path, lr: bool, dump: Session = dump) -> object:
            with dir_fd(d) as fd:
                req = pycriu.rpc.criu_req(type=pycriu.rpc.DUMP, opts=_opts(
                    pycriu, fd, pid=pid, notify_scripts=True, log_file="dump.log"))
                resp = dump.request(req, answer)
            assert resp.success and dump.exit_code == 0, _log_tail(d, "dump.log")
            return resp

        info = harness.dump_workload(wl, images, dumper=dumper)
        rest = Session(pycriu, binary)
        with dir_fd(images) as fd:
            resp = rest.request(pycriu.rpc.criu_req(type=pycriu.rpc.RESTORE, opts=_opts(
                pycriu, fd, rst_sibling=True, notify_scripts=True, log_file="restore.log")), answer)
        assert resp.success and rest.exit_code == 0, _log_tail(images, "restore.log")
        pid = resp.restore.pid
        assert pid == info.pid and ("post-restore", pid) in rest.notes
        harness.assert_continues(info, pid)
        harness.kill_restored(info, pid)
        seqs[tool] = ([s for s, _ in dump.notes], [s for s, _ in rest.notes], seen)
    spice, criu = seqs["spice"], seqs["criu"]
    assert spice[0] == criu[0] == ["pre-dump", "query-ext-files", "post-dump"]
    assert spice[1] == criu[1] == ["pre-restore", "post-restore", "pre-resume", "post-resume"]
    assert spice[2]["stdio"] == ["/dev/null"] * 3
    assert spice[2]["state"] in ("t", "T")  # still held, not yet running, when the client learns the pid


@pytest.fixture(scope="module")
def counter_dump(pycriu: Any, spice_criu: Path, compat_tmp: Path) -> harness.DumpInfo:
    wl = harness.start_workload("counter", compat_tmp / "rpc-notify-counter")
    try:
        return harness.dump_workload(wl, wl.rundir / "images", dumper=rpc_dumper(pycriu, spice_criu))
    except BaseException:
        wl.kill()
        raise


@pytest.mark.parametrize("script", ["pre-dump", "query-ext-files", "post-dump"])
def test_a_no_during_dump_fails_it_and_keeps_the_tree(script: str, pycriu: Any, spice_criu: Path,
                                                      workload_factory: Callable[..., harness.Workload]) -> None:
    wl = workload_factory("counter")
    images = wl.rundir / "images"
    s = Session(pycriu, spice_criu)
    with dir_fd(images) as fd:
        resp = s.request(pycriu.rpc.criu_req(type=pycriu.rpc.DUMP, opts=_opts(
            pycriu, fd, pid=wl.pid, notify_scripts=True, log_file="dump.log")),
            lambda sc, pid, swrk: sc != script)
    assert (resp.type, resp.success, s.exit_code) == (pycriu.rpc.DUMP, False, 1)
    assert s.notes[-1] == (script, None)
    assert resp.cr_errmsg == f"Error (spice/rpc): RPC client reported script error ({script})"
    assert not (images / "inventory.img").exists()  # nobody can restore a failed dump
    harness.assert_continues(wl, wl.pid)


@pytest.mark.parametrize("script, ok", [("pre-restore", False), ("post-restore", False),
                                        ("pre-resume", True), ("post-resume", True)])
def test_a_no_during_restore(script: str, ok: bool, pycriu: Any, spice_criu: Path,
                             counter_dump: harness.DumpInfo) -> None:
    """pre-/post-restore: the restore fails and nothing restored survives (the pid is still in the
    reply after post-restore, as criu does); pre-/post-resume: criu only logs it, so does spice."""
    info = counter_dump
    s = Session(pycriu, spice_criu)
    with dir_fd(info.images_dir) as fd:
        resp = s.request(pycriu.rpc.criu_req(type=pycriu.rpc.RESTORE, opts=_opts(
            pycriu, fd, rst_sibling=True, notify_scripts=True, log_file=f"restore-no-{script}.log")),
            lambda sc, pid, swrk: sc != script)
    log = info.images_dir / f"restore-no-{script}.log"
    assert f"RPC client reported script error ({script})" in log.read_text()
    if ok:
        assert resp.success and s.exit_code == 0 and resp.restore.pid == info.pid
        harness.assert_continues(info, info.pid)
        harness.kill_restored(info, info.pid)
        return
    assert (resp.success, s.exit_code) == (False, 1)
    assert resp.restore.pid == (info.pid if script == "post-restore" else -1)
    harness.reap_zombie_children()
    assert harness.process_state(info.pid) is None
    info.mark()


# ------------------------------------------------------------------------------------------ bad requests


def _bad_requests(pycriu: Any, fd: int) -> dict[str, bytes]:
    rpc = pycriu.rpc

    def req(t: int, **kw: Any) -> bytes:
        keep = kw.pop("keep_open", False)
        return rpc.criu_req(type=t, keep_open=keep, opts=_opts(pycriu, fd, **kw)).SerializeToString()

    return {
        "garbage": b"\xff\xff\xff",
        "EMPTY": rpc.criu_req(type=rpc.EMPTY).SerializeToString(),
        "type 77": b"\x08\x4d",
        "NOTIFY first": req(rpc.NOTIFY),
        "DUMP keep_open": req(rpc.DUMP, pid=4000000, keep_open=True),
        "log_file with /": req(rpc.DUMP, pid=4000000, log_file="a/b.log"),
        "bad images_dir_fd": rpc.criu_req(type=rpc.DUMP, opts=rpc.criu_opts(images_dir_fd=999, pid=1))
        .SerializeToString(),
        "no images dir": rpc.criu_req(type=rpc.DUMP, opts=rpc.criu_opts(images_dir_fd=-1, pid=1)).SerializeToString(),
        "empty_ns not NEWNET": req(rpc.DUMP, pid=1, empty_ns=0x20000000),
        "track_mem": req(rpc.DUMP, pid=1, track_mem=True),
    }


def test_bad_requests_are_answered_as_criu_answers_them(pycriu: Any, spice_criu: Path, criu_bin: Path,
                                                        tmp_path: Path) -> None:
    """(reply type, success, cr_errno, exit status) equal to real criu's for every bad request."""
    with dir_fd(tmp_path / "images") as fd:
        for what, packet in _bad_requests(pycriu, fd).items():
            got = []
            for binary in (spice_criu, criu_bin):
                s = Session(pycriu, binary)
                resp = s.request(packet)
                got.append(None if resp is None else (resp.type, resp.success, resp.cr_errno) + (s.exit_code,))
                if resp is None:
                    got[-1] = ("no reply", s.exit_code)
            assert got[0] == got[1], f"{what}: spice {got[0]} vs criu {got[1]}"


@pytest.mark.parametrize("field, value, words", [
    ("lazy_pages", True, "lazy_pages"),
    ("join_ns", [("ipc", "/proc/1/ns/ipc")], "join_ns"),
    ("lsm_profile", "apparmor:unconfined", "lsm_profile"),
    ("manage_cgroups_mode", "FULL", "manage_cgroups_mode full"),
    ("ps", ("127.0.0.1", 1), "page server"),
])
def test_refused_options_name_themselves_and_leave_the_tree(
        field: str, value: Any, words: str, pycriu: Any, spice_criu: Path,
        workload_factory: Callable[..., harness.Workload]) -> None:
    rpc = pycriu.rpc
    wl = workload_factory("counter")
    images = wl.rundir / "images"
    with dir_fd(images) as fd:
        o = _opts(pycriu, fd, pid=wl.pid, log_file="dump.log")
        if field == "join_ns":
            o.join_ns.add(ns=value[0][0], ns_file=value[0][1])
        elif field == "ps":
            o.ps.address, o.ps.port = value
        elif field == "manage_cgroups_mode":
            o.manage_cgroups_mode = getattr(rpc, value)
        else:
            setattr(o, field, value)
        s = Session(pycriu, spice_criu)
        resp = s.request(rpc.criu_req(type=rpc.DUMP, opts=o))
    assert (resp.success, s.exit_code) == (False, 1)
    assert resp.cr_errmsg.startswith("Error (spice/rpc): ") and words in resp.cr_errmsg
    assert words in (images / "dump.log").read_text()
    harness.assert_continues(wl, wl.pid)


def test_pre_dump_fails_honestly(pycriu: Any, spice_criu: Path, workload_factory: Callable[..., harness.Workload],
                                 tmp_path: Path) -> None:
    wl = workload_factory("counter")
    c = pycriu.criu()
    c.use_binary(str(spice_criu))
    with dir_fd(tmp_path / "pre") as fd:
        c.opts = _opts(pycriu, fd, pid=wl.pid, track_mem=True)
        with pytest.raises(pycriu.CRIUExceptionExternal) as ei:
            c.pre_dump()
    assert ei.value.typ == pycriu.rpc.PRE_DUMP
    harness.assert_continues(wl, wl.pid)


# ------------------------------------------------------------------------------------------ container-style


def test_runc_style_requests(pycriu: Any, spice_criu: Path, workload_factory: Callable[..., harness.Workload],
                             tmp_path: Path) -> None:
    """The option set runc sends (checkpoint: work dir, dump.log, notify, cgroups soft, external net/pid
    ns, empty_ns NEWNET, orphan_pts_master, ext_mnt, config_file; restore: rst_sibling, evasive devices,
    restore.log...) for a host-namespace tree: dump, post-restore gives the pid, the tree continues,
    logs and stats land in the work dir as runc/podman read them."""
    rpc = pycriu.rpc
    wl = workload_factory("counter")
    images, work = wl.rundir / "checkpoint", wl.rundir / "work"
    netns = os.stat("/proc/self/ns/net").st_ino
    pidns = os.stat("/proc/self/ns/pid").st_ino
    common = dict(manage_cgroups=True, manage_cgroups_mode=rpc.SOFT, notify_scripts=True, ext_unix_sk=False,
                  tcp_established=False, file_locks=False, empty_ns=CLONE_NEWNET, orphan_pts_master=True,
                  root="/", config_file="/etc/criu/runc.conf.spice-test-absent",
                  ext_mnt=[rpc.ext_mount_map(key="/etc/hostname", val="/etc/hostname")],
                  external=[f"net[{netns}]:extRootNetNS", f"pid[{pidns}]:extRootPidNS"])
    posted: dict[str, int | None] = {}

    def answer(script: str, pid: int | None, swrk: int) -> bool:
        posted[script] = pid
        return True

    with dir_fd(images) as ifd, dir_fd(work) as wfd:
        def dumper(pid: int, d: Path, lr: bool) -> object:
            s = Session(pycriu, spice_criu)
            resp = s.request(rpc.criu_req(type=rpc.DUMP, opts=_opts(
                pycriu, ifd, work_dir_fd=wfd, pid=pid, log_file="dump.log", tcp_skip_in_flight=True,
                link_remap=True, auto_dedup=True, **common)), answer)
            assert resp.success and s.exit_code == 0, _log_tail(work, "dump.log")
            return resp

        info = harness.dump_workload(wl, images, dumper=dumper)
        assert "post-dump" in posted
        assert (work / "dump.log").exists() and (work / "stats-dump").exists()
        assert not (images / "dump.log").exists()
        s = Session(pycriu, spice_criu)
        resp = s.request(rpc.criu_req(type=rpc.RESTORE, opts=_opts(
            pycriu, ifd, work_dir_fd=wfd, log_file="restore.log", rst_sibling=True, evasive_devices=True,
            cg_root=[rpc.cgroup_root(path="/")], **common)), answer)
    assert resp.success and s.exit_code == 0, _log_tail(work, "restore.log")
    assert posted["post-restore"] == resp.restore.pid == info.pid
    assert (work / "restore.log").exists() and (work / "stats-restore").exists()
    assert harness.parent_of(info.pid) == os.getpid()
    harness.assert_continues(info, info.pid)
    harness.kill_restored(info, info.pid)


PIPE_WRITER = """
import os, sys, time
os.setsid()
i = 0
while True:
    sys.stdout.write(f"{i}\\n"); sys.stdout.flush(); i += 1
    time.sleep(0.02)
"""


def test_inherit_fd_pipe_stdio(pycriu: Any, spice_criu: Path, tmp_path: Path) -> None:
    """runc's stdio case: the task's stdout was a pipe of the caller; the restore hands a new pipe
    in with inherit_fd key pipe:[ino] (the fd in criu's own table) and the output continues there."""
    rpc = pycriu.rpc
    r, w = os.pipe()
    p = subprocess.Popen([sys.executable, "-c", PIPE_WRITER], stdout=w, stdin=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, cwd=tmp_path)
    os.close(w)
    ino = os.fstat(r).st_ino
    with os.fdopen(r) as out:
        assert out.readline()
        images = tmp_path / "images"
        pycriu_dump(pycriu, spice_criu, p.pid, images)
        p.wait(timeout=30)
        last = int(out.read().split()[-1])  # everything written before the freeze, then EOF
    r2, w2 = os.pipe()
    os.set_inheritable(w2, True)  # the swrk process (pycriu's fork + exec) inherits it at w2
    try:
        pid = pycriu_restore(pycriu, spice_criu, images, inherit_fd=[rpc.inherit_fd(key=f"pipe:[{ino}]", fd=w2)])
    finally:
        os.close(w2)
    try:
        assert pid == p.pid and harness.parent_of(pid) == os.getpid()
        with os.fdopen(r2) as out2:
            got = [int(out2.readline()) for _ in range(3)]
        assert got == [last + 1, last + 2, last + 3]
    finally:
        harness.kill_pids([pid])


# ------------------------------------------------------------------------------------------ installs


def test_service_mode(pycriu: Any, spice_criu: Path, workload_factory: Callable[..., harness.Workload],
                      tmp_path: Path) -> None:
    """`criu service --address SOCK -d --pidfile F`: pycriu's use_sk client; a worker per connection;
    swrk-only options refused; SIGTERM stops it and removes the socket."""
    sock, pidfile = tmp_path / "criu_service.socket", tmp_path / "service.pid"
    p = subprocess.run([str(spice_criu), "service", "--address", str(sock), "-d", "--pidfile", str(pidfile),
                        "-o", "service.log", "-W", str(tmp_path), "-v4"],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    daemon = int(pidfile.read_text())
    try:
        assert harness.is_running(daemon) and sock.exists()
        c = pycriu.criu()
        c.use_sk(str(sock))
        c.check()
        wl = workload_factory("counter")
        images = wl.rundir / "svc-images"

        def dumper(pid: int, d: Path, lr: bool) -> object:
            with dir_fd(d) as fd:
                c.opts = _opts(pycriu, fd, pid=pid, log_file="dump.log")
                return c.dump()

        info = harness.dump_workload(wl, images, dumper=dumper)
        with dir_fd(images) as fd:
            c.opts = _opts(pycriu, fd, rst_sibling=True)
            with pytest.raises(pycriu.CRIUExceptionExternal) as ei:
                c.restore()
            assert ei.value.errno == errno.EBADRQC
            c.opts = _opts(pycriu, fd, log_file="restore.log")
            pid = c.restore().pid
        assert pid == info.pid
        harness.assert_continues(info, pid)
        harness.kill_restored(info, pid)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(daemon, signal.SIGTERM)
        harness.reap([daemon])
    deadline = time.monotonic() + harness.scaled(10)
    while sock.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not sock.exists()


def test_criu_in_path_is_spice(pycriu: Any, tmp_path: Path) -> None:
    """The `criu` console script of the package, found through $PATH as runc/podman/pycriu find it."""
    bindir = Path(sys.executable).parent
    assert (bindir / "criu").exists(), "no criu console script in the venv: make setup"
    out = subprocess.run([str(bindir / "criu"), "--version"], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "Version: 4.2.1"
    old = os.environ["PATH"]
    os.environ["PATH"] = f"{bindir}:{old}"
    try:
        s = Session(pycriu, "criu")  # pycriu's default: execvp("criu")
        check = s.request(pycriu.rpc.criu_req(type=pycriu.rpc.CHECK))
        assert (check.type, check.success, s.exit_code) == (pycriu.rpc.CHECK, True, 0)
        pre = Session(pycriu, "criu").request(pycriu.rpc.criu_req(type=pycriu.rpc.PRE_DUMP))
    finally:
        os.environ["PATH"] = old
    assert pre.cr_errmsg.startswith("Error (spice/rpc): pre-dump needs soft-dirty")  # spice answered


def test_rpc_bench_loop_restores_with_both_tools(pycriu: Any, spice_criu: Path, criu_bin: Path,
                                                 compat_tmp: Path) -> None:
    """The `make bench-rpc` loop (test_rpc_bench.py), once, every restore checked to continue."""
    import test_rpc_bench as bench

    out = bench.run(1, compat_tmp / "rpc-bench", spice_criu, criu_bin, pycriu, check_all=True)
    text = bench.report(out)
    assert all(x > 0 for w in bench.BENCH_WORKLOADS for t in ("spice", "criu") for x in out[w][t]["cpu"]), text


def test_exec_cmd_after_restore(pycriu: Any, spice_criu: Path, counter_dump: harness.DumpInfo) -> None:
    """criu_opts.exec_cmd: after the reply the swrk process becomes the command, its output in the log."""
    info = counter_dump
    marker = info.images_dir.parent / "exec-cmd.marker"
    marker.unlink(missing_ok=True)
    cmd = ["sh", "-c", f'echo "exec_cmd ran as $$"; echo $$ > {marker}']
    s = Session(pycriu, spice_criu)
    with dir_fd(info.images_dir) as fd:
        resp = s.request(pycriu.rpc.criu_req(type=pycriu.rpc.RESTORE, opts=_opts(
            pycriu, fd, rst_sibling=True, log_file="restore-exec.log", exec_cmd=cmd)))
    assert resp.success and s.exit_code == 0, _log_tail(info.images_dir, "restore-exec.log")
    assert resp.restore.pid == info.pid
    assert int(marker.read_text()) == s.swrk_pid  # the command ran in the swrk process itself
    assert f"exec_cmd ran as {s.swrk_pid}" in (info.images_dir / "restore-exec.log").read_text()
    harness.assert_continues(info, info.pid)
    harness.kill_restored(info, info.pid)
