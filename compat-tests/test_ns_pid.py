# SPDX-License-Identifier: MIT
"""Trees in a pid namespace of their own (`unshare -p -f`, every runc container), both ways.

The pidns workload (workloads/pidns.py) is the init of its pid namespace (pid 1 inside) with a child
(pid 5 inside: it forked and reaped three before) with a counting thread (tid 7) and a grandchild
(6), a counter going from one to the next through two pipes; the child owns its pipe (F_SETOWN 5)
and has a SIGUSR2 from the grandchild pending (si_pid 6), a timer signalling its thread (tid 7);
the init holds a pidfd of the child.
criu dumps such a tree with the pids as seen inside the namespace (pstree, core-/ids-/mm-/fs-<pid>
.img names, owners, siginfo) and no image of the namespace itself, and restores it into a new pid
namespace with those pids; so does spice: its images equal criu's (real crit), each tool restores
the other's dump (and spice its own) with pid 1, 5, 6 and tid 7 inside a new namespace, the counter
going on from the dump, also while the original still runs (its pids are free in a new namespace).
A root that is not the namespace's init is refused by name, as criu does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import harness
import pytest
from spice import assert_one_error, spice, spice_dumper, spice_restore

ROLES = {"main": (1, 0), "child": (5, 1), "grandchild": (6, 5)}  # role -> (pid, ppid) inside
CHILD_THREAD = 7  # the child's thread's tid inside


class Tree:
    """A running pidns workload (or another under `unshare -p -f setsid`: argv): its unshare (our
    child) and its init's pid here."""

    def __init__(self, rundir: Path, argv: list[str] | None = None, roles: tuple[str, ...] = tuple(ROLES)) -> None:
        harness.make_subreaper()
        rundir.mkdir(parents=True, exist_ok=True)
        self.rundir, self.out = rundir, rundir / "pidns.out"
        argv = argv or [sys.executable, "-B", "-E", "-s", str(harness.WORKLOAD_DIR / "pidns.py")]
        with open(rundir / "pidns.log", "ab") as log:
            self.proc = subprocess.Popen(
                [*argv, str(self.out)], cwd=rundir, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, close_fds=True,
                env={**os.environ, "PYTHONPATH": str(harness.HERE / "fdkinds")})
        deadline = time.monotonic() + harness.scaled(20)
        while len({ln.role for ln in self.lines()}) < len(roles):
            assert time.monotonic() < deadline and self.proc.poll() is None, harness.tail_text(rundir / "pidns.log")
            time.sleep(0.05)
        with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as f:
            (self.init,) = (int(p) for p in f.read().split())
        self.ns = _ns(self.init)

    def lines(self, start: int = 0) -> list[harness.Line]:
        lines = harness.read_lines(self.out, start)[0]
        assert not [ln for ln in lines if ln.failed], [ln.text for ln in lines if ln.failed]
        return lines

    def host_pid(self, role: str) -> int:
        """Our pid of one of the original's tasks (the pidns.py processes under unshare)."""
        me = self.init
        for _ in range(("main", "child", "grandchild").index(role)):
            with open(f"/proc/{me}/task/{me}/children") as f:
                me = int(f.read().split()[0])
        return me

    def kill(self) -> None:
        if harness.is_running(self.init):
            harness.kill_pids([self.init])
        self.proc.kill()
        self.proc.wait()


def _ns(pid: int) -> int:
    return os.stat(f"/proc/{pid}/ns/pid").st_ino


def _crit_doc(img: Path) -> dict:
    out = subprocess.run([str(harness.CRIT_BIN), "show", str(img)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def _crit(img: Path) -> list[dict]:
    return _crit_doc(img)["entries"]


def _last_seq(tree: Tree, ns: int) -> int:
    return max(int(ln.fields["seq"]) for ln in tree.lines() if ln.role == "main" and int(ln.fields["nspid"]) == ns)


def _check_restored(tree: Tree, root: int, dumped: tuple[int, int], since: int, original: int | None = None) -> None:
    """The tree restored at `root` (our pid of it) runs in a new pid namespace (not ours, not the
    original's if it still runs), its init pid 1 and the others with their pids as dumped; from
    offset `since` of the output, the counter goes on from the dump (dumped: the range of the
    main's last counter value at the dump), through both pipes (each checks every value)."""
    ns = _ns(root)
    assert ns not in (_ns(os.getpid()), original)
    with open(f"/proc/{root}/status") as f:
        nspid = next(line.split()[1:] for line in f if line.startswith("NSpid:"))
    assert nspid == [str(root), "1"], nspid
    deadline = time.monotonic() + harness.scaled(20)
    while True:
        mine = [ln for ln in tree.lines(since) if int(ln.fields["nspid"]) == ns]
        if all(sum(ln.role == r for ln in mine) >= 5 for r in ROLES):
            break
        assert time.monotonic() < deadline, harness.tail_text(tree.out)
        time.sleep(0.05)
    for role, (pid, ppid) in ROLES.items():
        got = [ln for ln in mine if ln.role == role]
        assert {(ln.pid, int(ln.fields["ppid"])) for ln in got} == {(pid, ppid)}, (role, got[0].text)
        seqs = [int(ln.fields["seq"]) for ln in got]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), (role, seqs)
        assert dumped[0] - 2 <= seqs[0] <= dumped[1] + 1, (role, seqs[0], dumped)
    assert {ln.fields["pidfd"] for ln in mine if ln.role == "main"} == {"5"}  # its pidfd of the child
    child = [ln for ln in mine if ln.role == "child"]
    assert {(ln.fields["owner"], ln.fields["pend"]) for ln in child} == {("5", "1")}, child[0].text
    thread = [(int(ln.fields["tid"]), int(ln.fields["thr"])) for ln in child]
    assert {tid for tid, _ in thread} == {CHILD_THREAD}, thread
    assert all(a[1] < b[1] for a, b in zip(thread, thread[1:], strict=False)), thread  # the thread runs on
    main = [int(ln.fields["seq"]) for ln in mine if ln.role == "main"]
    assert dumped[0] < main[0] <= dumped[1] + 1, (main[0], dumped)


def _kill_restored(root: int) -> None:
    harness.kill_pids([root])


def _dump(tree: Tree, images: Path, dumper: str, leave_running: bool) -> tuple[int, int]:
    """Dump the tree; the range of its main's last counter value at the dump."""
    before = _last_seq(tree, tree.ns)
    if dumper == "criu":
        harness.criu_dump(tree.init, images, leave_running=leave_running)
    else:
        spice_dumper(tree.init, images, leave_running)
    if not leave_running:
        tree.proc.wait(timeout=harness.scaled(10))  # unshare exits with its child
    return before, _last_seq(tree, tree.ns)


def _restore(tool: str, images: Path) -> int:
    return harness.criu_restore(images) if tool == "criu" else spice_restore(images)


@pytest.mark.parametrize("dumper,restorer", [("criu", "spice"), ("spice", "criu"), ("spice", "spice")])
def test_dump_restores_in_a_new_pid_namespace(criu_bin: Path, compat_tmp: Path, dumper: str, restorer: str) -> None:
    tree = Tree(compat_tmp / "pidns" / f"{dumper}-{restorer}")
    try:
        images = tree.rundir / "images"
        dumped = _dump(tree, images, dumper, leave_running=False)
        assert sorted(p.name for p in images.glob("core-*.img")) == ["core-1.img", "core-5.img", "core-6.img",
                                                                     f"core-{CHILD_THREAD}.img"]
        assert not list(images.glob("pidns-*"))
        for _ in range(2 if restorer == "spice" else 1):  # a second restore of the same images
            since = tree.out.stat().st_size
            root = _restore(restorer, images)
            try:
                _check_restored(tree, root, dumped, since)
                again = tree.rundir / f"again-{since}"  # criu tells what the restored tree holds
                harness.criu_dump(root, again, leave_running=True)
                assert _crit(again / "pstree.img") == _crit(images / "pstree.img")
                assert _crit(again / "core-5.img")[0]["tc"]["signals_s"] == \
                    _crit(images / "core-5.img")[0]["tc"]["signals_s"]  # the same siginfo (si_pid 6)
                assert [t["notify_thread_id"] for t in _crit(again / "core-5.img")[0]["tc"]["timers"]["posix"]] == \
                    [CHILD_THREAD]
                assert [e["pipe"]["fown"] for e in _crit(again / "files.img") if "pipe" in e] == \
                    [e["pipe"]["fown"] for e in _crit(images / "files.img") if "pipe" in e]
            finally:
                _kill_restored(root)
    finally:
        tree.kill()


@pytest.mark.parametrize("dumper", ["criu", "spice"])
def test_restore_while_the_original_runs(criu_bin: Path, compat_tmp: Path, dumper: str) -> None:
    """Its pids are taken here only in the original's namespace: a new one has them free."""
    tree = Tree(compat_tmp / "pidns" / f"running-{dumper}")
    try:
        dumped = _dump(tree, tree.rundir / "images", dumper, leave_running=True)
        since = tree.out.stat().st_size
        root = spice_restore(tree.rundir / "images")
        try:
            _check_restored(tree, root, dumped, since, original=tree.ns)
            assert harness.is_running(tree.init)
            assert _last_seq(tree, tree.ns) > dumped[1]  # the original went on too
        finally:
            _kill_restored(root)
    finally:
        tree.kill()


def test_spice_dump_writes_the_pids_as_criu(criu_bin: Path, compat_tmp: Path) -> None:
    """Both tools dump one running tree (--leave-running): the same image names, pstree and ids
    under real crit (the pids inside the namespace), no pidns image."""
    tree = Tree(compat_tmp / "pidns" / "both")
    try:
        theirs, ours = tree.rundir / "criu-images", tree.rundir / "spice-images"
        harness.criu_dump(tree.init, theirs, leave_running=True)
        spice_dumper(tree.init, ours, leave_running=True)
        names = {p.name for p in theirs.glob("*.img")}
        assert {p.name for p in ours.glob("*.img")} == names
        assert {"core-1.img", "ids-5.img", "mm-6.img", "fs-1.img", "pagemap-5.img"} <= names
        pstree = _crit(theirs / "pstree.img")
        assert [(e["pid"], e["ppid"], e["pgid"], e["sid"], e["threads"]) for e in pstree] == \
            [(1, 0, 1, 1, [1]), (5, 1, 1, 1, [5, CHILD_THREAD]), (6, 5, 1, 1, [6])]
        assert _crit(ours / "pstree.img") == pstree
        assert _crit(ours / f"core-{CHILD_THREAD}.img")[0]["thread_core"]["comm"] == \
            _crit(theirs / f"core-{CHILD_THREAD}.img")[0]["thread_core"]["comm"]
        for pid in (1, 5, 6):
            assert _crit(ours / f"ids-{pid}.img") == _crit(theirs / f"ids-{pid}.img")
            assert _crit(ours / f"fs-{pid}.img") == _crit(theirs / f"fs-{pid}.img")
            comm = _crit(theirs / f"core-{pid}.img")[0]["tc"]["comm"]
            assert _crit(ours / f"core-{pid}.img")[0]["tc"]["comm"] == comm
        timers = _crit(theirs / "core-5.img")[0]["tc"]["timers"]["posix"]  # the thread's SIGEV_THREAD_ID timer
        assert [t["notify_thread_id"] for t in timers] == [CHILD_THREAD]
        assert _crit(ours / "core-5.img")[0]["tc"]["timers"]["posix"] == timers
        signals = _crit(theirs / "core-5.img")[0]["tc"]["signals_s"]  # SIGUSR2 from the grandchild
        assert _crit(ours / "core-5.img")[0]["tc"]["signals_s"] == signals and signals["signals"]
        owners = sorted((e["pipe"]["fown"]["pid"], e["pipe"]["fown"]["pid_type"]) for e in _crit(theirs / "files.img")
                        if "pipe" in e)
        assert (5, 1) in owners  # F_SETOWN(5): F_OWNER_PID
        assert sorted((e["pipe"]["fown"]["pid"], e["pipe"]["fown"]["pid_type"]) for e in _crit(ours / "files.img")
                      if "pipe" in e) == owners
        ids = _crit(theirs / "ids-1.img")[0]
        assert ids["pid_ns_id"] != _crit(theirs / "inventory.img")[0]["root_ids"]["pid_ns_id"]
        assert _crit(ours / "inventory.img")[0]["root_ids"] == _crit(theirs / "inventory.img")[0]["root_ids"]
        assert harness.is_running(tree.init)
    finally:
        tree.kill()


def test_dump_of_a_task_not_the_namespace_init_is_refused(criu_bin: Path, compat_tmp: Path) -> None:
    """criu: "Can't dump a pid namespace without the process init"; spice the same, the tree runs on."""
    tree = Tree(compat_tmp / "pidns" / "not-init")
    try:
        child = tree.host_pid("child")
        images = tree.rundir / "images"
        images.mkdir()
        with pytest.raises(harness.CriuError, match="without the process init"):
            harness.criu_dump(child, images, leave_running=True, extra_args=["--shell-job"])
        p = spice("dump", "-t", str(child), "-D", str(images), "--shell-job", check=False)
        assert_one_error(p, "dump", "Can't dump a pid namespace without the process init")
        before = _last_seq(tree, tree.ns)
        time.sleep(0.5)
        assert _last_seq(tree, tree.ns) > before
    finally:
        tree.kill()


@pytest.mark.parametrize("binary", ["criu", "spice"])
def test_rpc_sibling_restore_answers_our_pid_of_the_root(criu_bin: Path, compat_tmp: Path, binary: str) -> None:
    """pycriu (CRIU 4.2.1's client) dumps the tree and restores it with rst_sibling (as runc does),
    criu itself or spice as `criu`: the answer's pid is the root's pid here (pid 1 inside), our child."""
    from test_rpc_pycriu import install_criu_shim, load_pycriu, pycriu_dump, pycriu_restore

    pycriu = load_pycriu()
    tool = criu_bin if binary == "criu" else install_criu_shim(compat_tmp / "criu-shim-pidns")
    tree = Tree(compat_tmp / "pidns" / f"rpc-{binary}")
    try:
        images = tree.rundir / "images"
        before = _last_seq(tree, tree.ns)
        pycriu_dump(pycriu, tool, tree.init, images)
        tree.proc.wait(timeout=harness.scaled(10))
        since = tree.out.stat().st_size
        root = pycriu_restore(pycriu, tool, images)
        try:
            assert harness.parent_of(root) == os.getpid()
            _check_restored(tree, root, (before, _last_seq(tree, tree.ns)), since)
        finally:
            _kill_restored(root)
    finally:
        tree.kill()


def test_restore_refuses_images_whose_root_is_not_the_namespace_init(criu_bin: Path, compat_tmp: Path) -> None:
    """criu's images of the tree with its root renumbered 9 (crit): a pid namespace of its own
    whose init would not be the root cannot be made; spice refuses by name, nothing is left behind."""
    tree = Tree(compat_tmp / "pidns" / "renumbered")
    try:
        images = tree.rundir / "images"
        harness.criu_dump(tree.init, images, leave_running=True)
    finally:
        tree.kill()
    for name in ("pstree.img", "core-1.img", "ids-1.img", "mm-1.img", "fs-1.img", "pagemap-1.img"):
        doc = _crit_doc(images / name)
        if name == "pstree.img":
            for e in doc["entries"]:
                for k in ("pid", "ppid", "pgid", "sid"):
                    e[k] = 9 if e[k] == 1 else e[k]
                e["threads"] = [9 if t == 1 else t for t in e["threads"]]
        (images / name).unlink()
        subprocess.run([str(harness.CRIT_BIN), "encode", "-o", str(images / name.replace("-1.", "-9."))],
                       input=json.dumps(doc), text=True, check=True)
    before = set(harness.descendants(os.getpid()))
    p = spice("restore", "-D", str(images), "-d", check=False)
    assert_one_error(p, "restore", "the root task 9", "not its init (pid 1)")
    assert set(harness.descendants(os.getpid())) <= before


def test_ptys_of_a_tree_in_its_pid_namespace(criu_bin: Path, compat_tmp: Path) -> None:
    """The ptypair workload (fdkinds/ptypair.py: a pty whose slave is the controlling terminal of a
    session inside the namespace) dumped by criu, restored by spice: the session (pid inside) gets
    its controlling terminal and foreground group back, its member the terminal too."""
    argv = ["unshare", "-p", "-f", "setsid", sys.executable, "-B", "-E", "-s",
            str(harness.HERE / "fdkinds" / "ptypair.py")]
    tree = Tree(compat_tmp / "pidns" / "ptys", argv, ("main", "child", "member"))
    try:
        pids = {ln.role: ln.pid for ln in tree.lines()}
        assert pids["main"] == 1
        images = tree.rundir / "images"
        harness.criu_dump(tree.init, images)
        tree.proc.wait(timeout=harness.scaled(10))
        since = tree.out.stat().st_size
        root = spice_restore(images)
        try:
            deadline = time.monotonic() + harness.scaled(20)
            while not all(sum(ln.role == r for ln in tree.lines(since)) >= 3 for r in pids):
                assert time.monotonic() < deadline, harness.tail_text(tree.out)
                time.sleep(0.05)
            mine = tree.lines(since)
            assert {ln.role: ln.pid for ln in mine} == pids
            assert {(ln.fields["ctty"], ln.fields["fg"]) for ln in mine if ln.role == "child"} == {("1", "1")}
            assert {ln.fields["mctty"] for ln in mine if ln.role == "member"} == {"1"}
            pongs = [int(ln.fields["pongs"]) for ln in mine if ln.role == "main"]
            assert pongs[-1] > pongs[0], pongs
            assert _ns(root) != _ns(os.getpid())
        finally:
            _kill_restored(root)
    finally:
        tree.kill()
