# SPDX-License-Identifier: MIT
"""spice's CRIU RPC pieces on real sockets and fds: criu_opts -> Options, the request loop's
answers (VERSION, FEATURE_CHECK, bad requests, keep_open), NOTIFY round trips, closed stdio.
The end-to-end tests against real pycriu and real CRIU are compat-tests/test_rpc_*.py."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from spice_criu import CRIU_VERSION
from spice_criu.errors import SpiceError
from spice_criu.images.pb import rpc_pb2 as rpc
from spice_criu.log import log
from spice_criu.rpc import Conn, _errno_of, work
from spice_criu.rpc_fast import feature_answers, feature_reply, parse_simple, try_fast, version_reply
from spice_criu.rpc_opts import EBADRQC, BadOptions, options_from_req, peer_dir

ME = os.getpid()


@pytest.fixture
def dirs(tmp_path: Path):
    images, work_dir = tmp_path / "images", tmp_path / "work"
    images.mkdir()
    work_dir.mkdir()
    fds = [os.open(images, os.O_DIRECTORY), os.open(work_dir, os.O_DIRECTORY)]
    yield images, work_dir, fds[0], fds[1]
    for fd in fds:
        os.close(fd)


def opts(**kw) -> rpc.criu_opts:
    ro = rpc.criu_opts(images_dir_fd=kw.pop("images_dir_fd", -1))
    for k, v in kw.items():
        field = getattr(ro, k)
        if isinstance(v, list):
            field.extend(v)
        elif hasattr(field, "CopyFrom") and not isinstance(v, int | str | bool):
            field.CopyFrom(v)
        else:
            setattr(ro, k, v)
    return ro


# ------------------------------------------------------------------------------------------ options


def test_dirs_through_the_clients_fds_and_criu_defaults(dirs) -> None:
    images, work_dir, ifd, wfd = dirs
    o = options_from_req("dump", opts(images_dir_fd=ifd, work_dir_fd=wfd, pid=1234), ME, swrk=True).o
    assert Path(o.images_dir) == images and Path(o.work_dir) == work_dir
    assert o.tree == 1234 and o.log_file == "criu.log" and o.verbosity == 2
    o = options_from_req("dump", opts(images_dir_fd=ifd, log_file="dump.log", log_level=4), ME, True).o
    assert o.work_dir == o.images_dir and o.log_file == "dump.log" and o.verbosity == 4
    assert o.tree == ME  # no pid: the client dumps itself
    assert options_from_req("dump", opts(images_dir=str(images), log_to_stderr=True), ME, True).o.log_file is None


def test_a_deleted_images_dir_is_still_reachable(tmp_path: Path) -> None:
    d = tmp_path / "gone"
    d.mkdir()
    fd = os.open(d, os.O_DIRECTORY)
    try:
        (d / "inventory.img").write_bytes(b"x")
        os.unlink(d / "inventory.img")
        os.rmdir(d)
        path = peer_dir(ME, fd, "images directory")
        assert path.startswith("/proc/self/fd/")
        assert os.fstat(fd).st_ino == os.stat(path).st_ino
    finally:
        os.close(fd)


@pytest.mark.parametrize("ro, with_dir, words", [
    (dict(log_file="a/b.log"), True, "no subdirs"),
    (dict(), False, "Neither images_dir_fd nor images_dir"),
    (dict(images_dir_fd=987), False, "fd 987"),
    (dict(images_dir="/nonexistent-spice"), False, "not a directory"),
    (dict(track_mem=True), True, "Tracking memory is not available"),
    (dict(parent_img="../prev"), True, "Tracking memory is not available"),
    (dict(empty_ns=0x20000000), True, "only CLONE_NEWNET"),
])
def test_bad_options_are_ebadrqc(dirs, ro, with_dir, words) -> None:
    _, _, ifd, _ = dirs
    if with_dir:
        ro = dict(ro, images_dir_fd=ifd)
    with pytest.raises(BadOptions, match=words) as ei:
        options_from_req("dump", opts(**ro), ME, swrk=True)
    assert ei.value.errno == EBADRQC == errno.EBADRQC
    assert _errno_of(ei.value) == EBADRQC


@pytest.mark.parametrize("ro, words", [
    (dict(lazy_pages=True), "lazy_pages"),
    (dict(ps=rpc.criu_page_server_info(address="127.0.0.1", port=1)), "page server"),
    (dict(join_ns=[rpc.join_namespace(ns="ipc", ns_file="/proc/1/ns/ipc")]), "join_ns.*ipc"),
    (dict(veths=[rpc.criu_veth_pair(if_in="a", if_out="b")]), "veths"),
    (dict(lsm_profile="apparmor:x"), "lsm_profile"),
    (dict(manage_cgroups_mode=rpc.FULL), "manage_cgroups_mode full"),
    (dict(manage_cgroups_mode=rpc.STRICT), "manage_cgroups_mode strict"),
    (dict(tls=True), "tls"),
    (dict(freeze_cgroup="/nonexistent/cg"), "freeze_cgroup /nonexistent/cg"),
])
def test_what_spice_cannot_do_is_refused_by_name(dirs, ro, words) -> None:
    _, _, ifd, _ = dirs
    with pytest.raises(SpiceError, match=words):
        options_from_req("dump", opts(images_dir_fd=ifd, **ro), ME, swrk=True)


def test_swrk_only_options_are_refused_by_the_service(dirs) -> None:
    _, _, ifd, _ = dirs
    for ro in (dict(rst_sibling=True), dict(inherit_fd=[rpc.inherit_fd(key="pipe:[1]", fd=0)])):
        with pytest.raises(BadOptions, match="swrk"):
            options_from_req("restore", opts(images_dir_fd=ifd, **ro), ME, swrk=False)


def test_container_options_map_or_are_harmless(dirs) -> None:
    """What runc and crun send for a dump and a restore of a host-namespace tree."""
    images, work_dir, ifd, wfd = dirs
    common = dict(images_dir_fd=ifd, work_dir_fd=wfd, log_level=4, manage_cgroups=True,
                  manage_cgroups_mode=rpc.SOFT, notify_scripts=True, shell_job=True, ext_unix_sk=True,
                  tcp_established=True, file_locks=True, empty_ns=0x40000000, orphan_pts_master=True,
                  root="/run/runc/ctr/criu-root", config_file="/nonexistent/runc.conf",
                  ext_mnt=[rpc.ext_mount_map(key="/etc/hosts", val="/etc/hosts")],
                  external=["net[4026531840]:extRootNetNS", "pid[4026531836]:extRootPidNS"])
    o = options_from_req("dump", opts(**common, log_file="dump.log", pid=42, leave_running=True,
                                      tcp_skip_in_flight=True, link_remap=True, auto_dedup=True,
                                      network_lock=rpc.NFTABLES, timeout=7, ghost_limit=4096), ME, True).o
    assert (o.tree, o.leave_running, o.shell_job, o.ext_unix_sk, o.tcp_established, o.file_locks,
            o.link_remap) == (42, True, True, True, True, True, True)
    assert (o.network_lock, o.timeout, o.ghost_limit, o.log_file) == ("nftables", 7, 4096, "dump.log")
    assert o.skip_in_flight  # runc --tcp-skip-in-flight
    assert o.root == "/run/runc/ctr/criu-root"  # used only for a tree with its own mount namespace
    assert o.external == [*common["external"], "mnt[/etc/hosts]:/etc/hosts"] and Path(o.work_dir) == work_dir
    r = options_from_req("restore", opts(**common, log_file="restore.log", rst_sibling=True, evasive_devices=True,
                                         cg_root=[rpc.cgroup_root(path="/x")],
                                         inherit_fd=[rpc.inherit_fd(key="pipe:[77]", fd=5)],
                                         exec_cmd=["true"]), ME, True)
    o = r.o
    assert o.restore_detached and o.restore_sibling and o.inherit_fd == ["fd[5]:pipe:[77]"]
    assert r.exec_cmd == ["true"] and Path(o.images_dir) == images


def test_config_file_applies_after_the_rpc_options(dirs, tmp_path: Path) -> None:
    _, _, ifd, _ = dirs
    conf = tmp_path / "runc.conf"
    conf.write_text("# comment\nleave-running\ntcp-established\nlog-file from-conf.log\n"
                    "enable-external-masters\nghost-limit 2M\n\n")
    o = options_from_req("dump", opts(images_dir_fd=ifd, config_file=str(conf), log_file="dump.log"), ME, True).o
    assert o.leave_running and o.tcp_established and o.log_file == "from-conf.log" and o.ghost_limit == 2 << 20
    conf.write_text('log-file "unterminated\n')
    with pytest.raises(SpiceError, match="runc.conf:1"):
        options_from_req("dump", opts(images_dir_fd=ifd, config_file=str(conf)), ME, True)


def test_feature_answers_are_honest() -> None:
    from spice_criu.check import FEATURES

    got = feature_answers(dict(mem_track=True, lazy_pages=True, pidfd_store=True))
    assert got == {"mem_track": False, "lazy_pages": FEATURES["uffd-noncoop"](),
                   "pidfd_store": FEATURES["pidfd_store"]()}
    assert feature_answers(dict.fromkeys(got, False)) == dict.fromkeys(got, False)


def test_errno_of_failures() -> None:
    assert _errno_of(SpiceError("dump", "No process with pid 999999")) == errno.ESRCH
    assert _errno_of(SpiceError("restore", "pid 77 is already taken by another process")) == errno.EEXIST
    assert _errno_of(SpiceError("restore", "something else")) is None


# ------------------------------------------------------------------------------------------ the loop


class Client:
    """The test's end of a socketpair, with spice's request loop serving the other end in a thread."""

    def __init__(self) -> None:
        self.sk, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.conn = Conn(theirs, swrk=True)
        self.rc: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.rc = work(self.conn)
        finally:
            self.conn.sk.close()  # as the swrk process exiting would

    def start(self) -> Client:
        self.thread.start()
        return self

    def send(self, data: bytes | rpc.criu_req) -> None:
        self.sk.send(data if isinstance(data, bytes) else data.SerializeToString())

    def recv(self, timeout: float = 10) -> rpc.criu_resp | None:
        self.sk.settimeout(timeout)
        data = self.sk.recv(65536)
        if not data:
            return None
        resp = rpc.criu_resp()
        resp.ParseFromString(data)
        return resp

    def finish(self) -> int | None:
        self.sk.shutdown(socket.SHUT_WR)
        self.thread.join(10)
        self.sk.close()
        return self.rc


def test_version_and_feature_check_keep_open() -> None:
    c = Client().start()
    c.send(rpc.criu_req(type=rpc.VERSION, keep_open=True))
    v = c.recv()
    assert (v.type, v.success) == (rpc.VERSION, True)
    assert (v.version.major_number, v.version.minor_number, v.version.sublevel) == CRIU_VERSION
    assert not v.version.HasField("gitid")  # a gitid would make clients round up to 4.3
    c.send(rpc.criu_req(type=rpc.FEATURE_CHECK, features=rpc.criu_features(mem_track=True)))
    f = c.recv()
    assert (f.type, f.success) == (rpc.FEATURE_CHECK, True)
    assert f.features.HasField("mem_track") and not f.features.mem_track
    assert f.features.HasField("lazy_pages") and f.features.HasField("pidfd_store")
    assert c.recv() is None  # no keep_open on the second: the session ends
    assert c.finish() == 0


@pytest.mark.parametrize("packet, answer", [
    (b"\xff\xff\xff", None),  # not a criu_req: no answer
    (rpc.criu_req(type=rpc.EMPTY).SerializeToString(), rpc.EMPTY),
    (b"\x08\x4d", rpc.EMPTY),  # type 77
    (rpc.criu_req(type=rpc.NOTIFY, notify_success=True).SerializeToString(), rpc.EMPTY),
    (rpc.criu_req(type=rpc.DUMP, keep_open=True, opts=rpc.criu_opts(images_dir_fd=-1)).SerializeToString(), None),
    (rpc.criu_req(type=rpc.RESTORE, keep_open=True).SerializeToString(), None),
])
def test_bad_requests_end_the_session_as_criu(packet: bytes, answer: int | None) -> None:
    c = Client().start()
    c.send(packet)
    resp = c.recv()
    if answer is None:
        assert resp is None
    else:
        assert (resp.type, resp.success) == (answer, False)
        assert c.recv() is None
    assert c.finish() == 255


def test_pre_dump_is_answered_honestly() -> None:
    for t in (rpc.PRE_DUMP, rpc.SINGLE_PRE_DUMP):
        c = Client().start()
        c.send(rpc.criu_req(type=t, opts=rpc.criu_opts(images_dir_fd=-1, pid=1)))
        resp = c.recv()
        assert (resp.type, resp.success) == (t, False)
        assert "soft-dirty" in resp.cr_errmsg and resp.cr_errmsg.startswith("Error (spice/rpc): ")
        assert c.finish() == 255


def test_option_errors_reply_ebadrqc_and_first_error() -> None:
    c = Client().start()
    c.send(rpc.criu_req(type=rpc.DUMP, opts=rpc.criu_opts(images_dir_fd=-1, pid=1, log_to_stderr=True)))
    resp = c.recv()
    assert (resp.type, resp.success, resp.cr_errno) == (rpc.DUMP, False, errno.EBADRQC)
    assert resp.cr_errmsg == "Error (spice/rpc): Neither images_dir_fd nor images_dir was passed by RPC client"
    assert resp.dump.HasField("restored") and not resp.dump.restored
    assert c.finish() == 1
    c = Client().start()
    c.send(rpc.criu_req(type=rpc.RESTORE, opts=rpc.criu_opts(images_dir_fd=-1, log_to_stderr=True)))
    resp = c.recv()
    assert (resp.type, resp.success, resp.restore.pid) == (rpc.RESTORE, False, -1)
    assert c.finish() == 1


def test_wait_pid_of_a_child_and_of_a_stranger() -> None:
    p = subprocess.Popen(["sh", "-c", "exit 3"])
    c = Client().start()
    c.send(rpc.criu_req(type=rpc.WAIT_PID, pid=p.pid))
    resp = c.recv()
    assert (resp.type, resp.success) == (rpc.WAIT_PID, True)
    assert os.waitstatus_to_exitcode(resp.status) == 3
    assert c.finish() == 0
    p.returncode = 3  # reaped by the request
    c = Client().start()
    c.send(rpc.criu_req(type=rpc.WAIT_PID, pid=1))
    resp = c.recv()
    assert (resp.success, resp.cr_errno) == (False, errno.ECHILD)
    c.finish()


# ------------------------------------------------------------------------------------------ notify


def _notify_pair(answers: dict[str, bool], external: list[str] | None = None):
    """A Conn and a thread answering its NOTIFYs (script -> success); returns (conn, seen, thread)."""
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    conn = Conn(theirs, swrk=True)
    seen: list[tuple[str, int | None]] = []

    def answer() -> None:
        while True:
            data = mine.recv(65536)
            if not data:
                return
            resp = rpc.criu_resp()
            resp.ParseFromString(data)
            assert (resp.type, resp.success) == (rpc.NOTIFY, True)
            n = resp.notify
            seen.append((n.script, n.pid if n.HasField("pid") else None))
            reply = rpc.criu_req(type=rpc.NOTIFY, notify_success=answers.get(n.script, True))
            if n.script == "query-ext-files" and external:
                reply.opts.images_dir_fd = -1
                reply.opts.external.extend(external)
            mine.send(reply.SerializeToString())

    t = threading.Thread(target=answer, daemon=True)
    t.start()
    return conn, mine, seen, t


def test_notify_round_trips() -> None:
    from spice_criu.cli import Options

    o = Options()
    conn, mine, seen, t = _notify_pair({"post-restore": False, "pre-resume": False},
                                       external=["file[1:2]"])
    o.notify = conn.notifier(o, scripts=True)
    o.run_script("pre-dump")
    o.run_script("query-ext-files")
    assert o.external == ["file[1:2]"]
    with pytest.raises(SpiceError, match=r"RPC client reported script error \(post-restore\)"):
        o.run_script("post-restore", 4242)
    assert conn.notified_pid == 4242
    o.run_script("pre-resume")  # a no at pre-resume is only logged, as criu does
    assert seen == [("pre-dump", None), ("query-ext-files", None), ("post-restore", 4242), ("pre-resume", None)]
    mine.shutdown(socket.SHUT_RDWR)
    t.join(5)
    mine.close()
    with pytest.raises(SpiceError, match="post-dump"):  # the client is gone: a failed action
        o.run_script("post-dump")
    conn.sk.close()


def test_without_notify_scripts_only_the_pid_is_kept() -> None:
    from spice_criu.cli import Options

    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    conn = Conn(theirs, swrk=True)
    o = Options()
    o.notify = conn.notifier(o, scripts=False)
    o.run_script("pre-restore")
    o.run_script("post-restore", 99)
    assert conn.notified_pid == 99
    mine.setblocking(False)
    with pytest.raises(BlockingIOError):
        mine.recv(100)  # nothing was sent
    mine.close()
    theirs.close()


def test_cli_options_run_script_is_a_noop() -> None:
    from spice_criu.cli import Options

    Options().run_script("post-restore", 1)


# ------------------------------------------------------------------------------------------ stdio


def test_swrk_survives_closed_stdio(tmp_path: Path) -> None:
    """pycriu closes fds 0-2 before exec'ing `criu swrk`: spice puts /dev/null there first, so the
    sockets and files it opens never land on them, and still answers."""
    out = tmp_path / "out"
    prog = (
        "import os, sys\n"
        "from spice_criu.rpc import guard_stdio\n"
        "closed = [fd for fd in (0, 1, 2) if not os.path.exists(f'/proc/self/fd/{fd}')]\n"
        "guard_stdio()\n"
        "print('to stdout'); print('to stderr', file=sys.stderr)\n"
        "from spice_criu.log import log\n"
        "log.error('rpc', 'logged before any log file')\n"
        "links = [os.readlink(f'/proc/self/fd/{fd}') for fd in (0, 1, 2)]\n"
        f"open({str(out)!r}, 'w').write(repr((closed, links)))\n"
    )

    def close_stdio() -> None:
        for fd in (0, 1, 2):
            os.close(fd)

    subprocess.run([sys.executable, "-c", prog], preexec_fn=close_stdio, check=True, timeout=60)
    closed, links = eval(out.read_text())  # noqa: S307 - our own repr
    assert closed == [0, 1, 2]
    assert links == ["/dev/null"] * 3


def test_log_is_reset_between_requests() -> None:
    log.first_error = "Error (spice/x): stale"
    c = Client().start()
    c.send(rpc.criu_req(type=rpc.PRE_DUMP))
    resp = c.recv()
    assert "stale" not in resp.cr_errmsg
    c.finish()


# ------------------------------------------------------------------------------------------ fast path


def test_fast_replies_are_the_protobuf_encoding() -> None:
    want = rpc.criu_resp(type=rpc.VERSION, success=True)
    want.version.major_number, want.version.minor_number, want.version.sublevel = CRIU_VERSION
    assert version_reply() == want.SerializeToString()
    for answers in ({"mem_track": False, "lazy_pages": True, "pidfd_store": True},
                    {"mem_track": False, "lazy_pages": False, "pidfd_store": False}):
        want = rpc.criu_resp(type=rpc.FEATURE_CHECK, success=True, features=rpc.criu_features(**answers))
        assert feature_reply(answers) == want.SerializeToString()


@pytest.mark.parametrize("req, want", [
    (rpc.criu_req(type=rpc.VERSION), (rpc.VERSION, dict(mem_track=False, lazy_pages=False, pidfd_store=False))),
    (rpc.criu_req(type=rpc.FEATURE_CHECK, features=rpc.criu_features(mem_track=True, pidfd_store=True)),
     (rpc.FEATURE_CHECK, dict(mem_track=True, lazy_pages=False, pidfd_store=True))),
    (rpc.criu_req(type=rpc.VERSION, opts=rpc.criu_opts(images_dir_fd=3, log_file="x")),
     (rpc.VERSION, dict(mem_track=False, lazy_pages=False, pidfd_store=False))),
    (rpc.criu_req(type=rpc.VERSION, keep_open=True), None),
    (rpc.criu_req(type=rpc.DUMP, opts=rpc.criu_opts(images_dir_fd=3)), None),
    (rpc.criu_req(type=rpc.NOTIFY), None),
])
def test_fast_parse(req: rpc.criu_req, want) -> None:
    assert parse_simple(req.SerializeToString()) == want


@pytest.mark.parametrize("data", [b"", b"\xff\xff\xff", b"\x08", b"\x08\x0a\x2a\x05ab", b"\x08\x0a\x0f"])
def test_fast_parse_leaves_what_it_does_not_understand(data: bytes) -> None:
    assert parse_simple(data) is None


def test_fast_path_answers_or_leaves_the_packet() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with a, b:
        a.send(rpc.criu_req(type=rpc.FEATURE_CHECK, features=rpc.criu_features(mem_track=True)).SerializeToString())
        assert try_fast(b.fileno()) == 0
        resp = rpc.criu_resp()
        resp.ParseFromString(a.recv(100))
        assert (resp.type, resp.success, resp.features.mem_track) == (rpc.FEATURE_CHECK, True, False)
        dump = rpc.criu_req(type=rpc.DUMP, opts=rpc.criu_opts(images_dir_fd=3)).SerializeToString()
        a.send(dump)
        assert try_fast(b.fileno()) is None
        assert b.recv(100) == dump  # still there for the full server


@pytest.mark.parametrize("entry", [["-m", "spice_criu"], ["-m", "spice_criu.rpc_criu"]])
@pytest.mark.parametrize("rtype", [rpc.VERSION, rpc.CHECK])
def test_swrk_entry_points(entry: list[str], rtype: int) -> None:
    """`spice swrk FD` and the `criu` entry: the fast path (VERSION) and the full server (CHECK)."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with a:
        p = subprocess.Popen([sys.executable, *entry, "swrk", str(b.fileno())], pass_fds=[b.fileno()],
                             stdin=subprocess.DEVNULL)
        b.close()
        a.send(rpc.criu_req(type=rtype).SerializeToString())
        a.settimeout(60)
        resp = rpc.criu_resp()
        resp.ParseFromString(a.recv(4096))
        assert (resp.type, resp.success) == (rtype, True)
        assert p.wait(60) == 0


# ------------------------------------------------------------------------------------------ lite messages
# The server speaks rpc.proto through spice_criu.images.lite (no protobuf import in `criu swrk`): its
# replies must be protobuf's bytes, its reading of requests protobuf's.


def test_lite_rpc_names_are_protobufs() -> None:
    from spice_criu import rpc as server

    numbers = dict(rpc.criu_req_type.items())
    assert {n: getattr(server.rpc, n) for n in numbers} == numbers
    assert {v: n for n, v in numbers.items()} == server.REQ_NAMES
    for name in ("criu_req", "criu_resp", "criu_opts"):
        assert type(getattr(server.rpc, name)()).__module__ == "spice_criu.images.lite"


def _raw_reply(req: rpc.criu_req) -> tuple[bytes, int | None]:
    """The bytes the request loop answers req with (one request, no keep_open), and its exit status."""
    c = Client().start()
    c.send(req)
    c.sk.settimeout(10)
    raw = c.sk.recv(65536)
    return raw, c.finish()


def _pre_dump_error() -> str:
    from spice_criu.rpc import _NO_PRE_DUMP

    return f"Error (spice/rpc): {_NO_PRE_DUMP}"


NO_DIR = "Error (spice/rpc): Neither images_dir_fd nor images_dir was passed by RPC client"


@pytest.mark.parametrize("req, want, rc", [
    (rpc.criu_req(type=rpc.DUMP, opts=rpc.criu_opts(images_dir_fd=-1, pid=1, log_to_stderr=True)),
     lambda: rpc.criu_resp(type=rpc.DUMP, success=False, dump=rpc.criu_dump_resp(restored=False),
                           cr_errno=errno.EBADRQC, cr_errmsg=NO_DIR), 1),
    (rpc.criu_req(type=rpc.RESTORE, opts=rpc.criu_opts(images_dir_fd=-1, log_to_stderr=True)),
     lambda: rpc.criu_resp(type=rpc.RESTORE, success=False, restore=rpc.criu_restore_resp(pid=-1),
                           cr_errno=errno.EBADRQC, cr_errmsg=NO_DIR), 1),
    (rpc.criu_req(type=rpc.VERSION),
     lambda: rpc.criu_resp(type=rpc.VERSION, success=True, version=rpc.criu_version(
         major_number=CRIU_VERSION[0], minor_number=CRIU_VERSION[1], sublevel=CRIU_VERSION[2])), 0),
    (rpc.criu_req(type=rpc.FEATURE_CHECK, features=rpc.criu_features(lazy_pages=True, pidfd_store=True)),
     lambda: rpc.criu_resp(type=rpc.FEATURE_CHECK, success=True, features=rpc.criu_features(
         **feature_answers(dict(mem_track=False, lazy_pages=True, pidfd_store=True)))), 0),
    (rpc.criu_req(type=rpc.EMPTY), lambda: rpc.criu_resp(type=rpc.EMPTY, success=False), 255),
    (rpc.criu_req(type=rpc.PRE_DUMP), lambda: rpc.criu_resp(type=rpc.PRE_DUMP, success=False,
                                                           cr_errmsg=_pre_dump_error()), 255),
    (rpc.criu_req(type=rpc.CPUINFO_DUMP), lambda: rpc.criu_resp(
        type=rpc.CPUINFO_DUMP, success=False,
        cr_errmsg="Error (spice/rpc): cpuinfo dump/check is not supported by spice"), 1),
    (rpc.criu_req(type=rpc.WAIT_PID, pid=1),
     lambda: rpc.criu_resp(type=rpc.WAIT_PID, success=False, cr_errno=errno.ECHILD), 0),
], ids=["dump-ebadrqc", "restore-pid-minus-1", "version", "feature-check", "empty", "pre-dump", "cpuinfo",
        "wait-pid-echild"])
def test_replies_are_protobufs_bytes(req: rpc.criu_req, want, rc: int) -> None:
    raw, got_rc = _raw_reply(req)
    assert raw == want().SerializeToString()
    assert got_rc == rc


def test_wait_pid_reply_is_protobufs_bytes() -> None:
    p = subprocess.Popen(["sh", "-c", "kill -TERM $$"])
    raw, rc = _raw_reply(rpc.criu_req(type=rpc.WAIT_PID, pid=p.pid))
    p.returncode = -15  # reaped by the request
    want = rpc.criu_resp(type=rpc.WAIT_PID, success=True, status=15)  # signalled by SIGTERM
    assert (raw, rc) == (want.SerializeToString(), 0)


def test_notify_is_protobufs_bytes() -> None:
    from spice_criu.cli import Options

    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with mine, theirs:
        conn = Conn(theirs, swrk=True)
        o = Options()
        o.notify = conn.notifier(o, scripts=True)
        for script, pid in (("post-restore", 4242), ("pre-dump", None), ("post-resume", -1)):
            answer = rpc.criu_req(type=rpc.NOTIFY, notify_success=True)
            mine.send(answer.SerializeToString())  # queued before the notification: no thread needed
            o.run_script(script, pid)
            want = rpc.criu_resp(type=rpc.NOTIFY, success=True, notify=rpc.criu_notify(script=script, pid=pid))
            assert mine.recv(65536) == want.SerializeToString()


def _lite_read(data: bytes):
    """data as the server reads a request (Conn.recv on a real socket)."""
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with mine, theirs:
        mine.send(data)
        return Conn(theirs, swrk=True).recv()


def test_requests_read_as_protobuf_reads_them() -> None:
    """Random criu_req (every criu_opts field, nested messages, missing required fields) reads field
    for field as protobuf reads it."""
    import random

    from test_lite import assert_same, random_message

    rng = random.Random("rpc-requests")
    for i in range(200):
        req = random_message(rpc.criu_req, rng, p=0.3 if i % 2 else 0.9)
        data = req.SerializePartialToString()
        assert_same(rpc.criu_req.FromString(data), _lite_read(data))


def test_unknown_fields_and_values_are_ignored_as_protobuf_does() -> None:
    """A newer client's fields (and an unknown request type, an unknown enum value) are skipped."""
    from test_lite import assert_same

    from spice_criu.images.wire import encode_varint, length_delimited

    def unknown(n: int) -> bytes:
        return (encode_varint(n << 3) + encode_varint(7) + length_delimited(n + 1, b"new\xff")
                + encode_varint((n + 2) << 3 | 5) + b"\0\0\0\0" + encode_varint((n + 3) << 3 | 1) + bytes(8)
                + encode_varint((n + 4) << 3 | 3) + encode_varint(1 << 3) + b"\x01" + encode_varint((n + 4) << 3 | 4))

    opts = rpc.criu_opts(images_dir_fd=5, pid=7, external=["net[1]:x"]).SerializeToString()
    opts += unknown(900) + encode_varint(64 << 3) + encode_varint(42)  # network_lock 42: not a value
    for rtype in (rpc.DUMP, 77):
        data = encode_varint(1 << 3) + encode_varint(rtype) + length_delimited(2, opts) + unknown(200)
        ref = rpc.criu_req.FromString(data)
        ours = _lite_read(data)
        assert_same(ref, ours)
        assert ours.opts.network_lock == rpc.IPTABLES and not ours.opts.HasField("network_lock")
        assert ours.type == (rpc.DUMP if rtype == rpc.DUMP else rpc.EMPTY)
