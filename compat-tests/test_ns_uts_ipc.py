# SPDX-License-Identifier: MIT
"""Trees in uts and ipc namespaces of their own (`unshare -u -i`, every runc container), both ways.

The utsipc workload (workloads/utsipc.py) names its uts namespace and changes SysV/mqueue limits of
its ipc namespace, and talks through SysV message queues and semaphores in it, from a root and a
child. criu dumps such a tree with utsns-<id>.img (host and domain name), ipcns-var-<id>.img (the
ipc sysctls), ipcns-msg-<id>.img (queues and their messages) and ipcns-sem-<id>.img (semaphore
sets and values), and restores it into new namespaces holding them again; so does spice: its
images equal criu's (real crit, and byte for byte), and each tool restores the other's dump (and
spice its own) with the names, limits and objects as dumped, in namespaces that are not the
host's, shared by the whole tree. A namespace holding SysV shared memory is refused by name, by
`spice dump` (the tree runs on) and by `spice restore` of criu's images (no task left behind).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import harness
import pytest
from harness import assert_continues
from spice import assert_one_error, spice, spice_dumper, spice_restore

harness.SPECS.setdefault("utsipc", harness.WorkloadSpec(
    "utsipc", "utsipc.py", roles=("main", "child"),
    constants=("token", "host", "dom", "msgmax", "sem", "shmmni", "mqmax", "queued", "semv", "shared"),
    monotonic=("semc", "got")))

KINDS = ("uts", "ipc")


def _crit(crit: Path, img: Path) -> dict:
    out = subprocess.run([str(crit), "show", str(img)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def _ns(pid: int, kind: str) -> str:
    return os.readlink(f"/proc/{pid}/ns/{kind}")


def _inside(pid: int, *cmd: str) -> str:
    """What cmd prints run inside pid's uts and ipc namespaces (nsenter), read by the test itself."""
    return subprocess.run(["nsenter", "-t", str(pid), "-u", "-i", *cmd], capture_output=True, text=True,
                          check=True).stdout.strip()


def _check_restored(info: harness.DumpInfo, pid: int) -> None:
    """The tree continues with its names and limits as dumped (the workload checks them every tick
    against what it set: constants), in new namespaces shared by root and child, not the host's."""
    cont = assert_continues(info, pid)
    before = info.pre_dump["main"].fields
    for kind in KINDS:
        assert _ns(pid, kind) != _ns(os.getpid(), kind), kind
        assert _ns(cont.pids["child"], kind) == _ns(pid, kind), kind
    assert _inside(pid, "hostname") == before["host"]
    assert _inside(pid, "domainname") == before["dom"]
    assert _inside(pid, "sysctl", "-n", "kernel.msgmax") == before["msgmax"]
    assert _inside(pid, "sysctl", "-n", "fs.mqueue.msg_max") == before["mqmax"]
    assert ",".join(_inside(pid, "sysctl", "-n", "kernel.sem").split()) == before["sem"]
    assert before["host"] != _inside(os.getpid(), "hostname")
    # the semaphore the root raises once a tick went on from its dumped value (the workload
    # checks the queued and in-flight messages itself: `queued`, and `got` counting in order)
    dumped = int(before["semc"]) - int(before["tick"])
    lines = [ln for ln in harness.read_lines(info.out_file, info.resume_offset)[0] if ln.role == "main"]
    assert lines and all(int(ln.fields["semc"]) - (ln.tick or 0) == dumped for ln in lines), (dumped, lines[:2])
    assert int(lines[-1].fields["got"]) > int(before["got"])


def _dump(compat_tmp: Path, name: str, dumper=None) -> harness.DumpInfo:
    wl = harness.start_workload("utsipc", compat_tmp / "utsipc" / name)
    for kind in KINDS:
        assert _ns(wl.pid, kind) != _ns(os.getpid(), kind)
    return harness.dump_workload(wl, wl.rundir / "images", dumper=dumper)


@pytest.fixture(scope="module")
def criu_dumped(criu_bin: Path, compat_tmp: Path) -> harness.DumpInfo:
    return _dump(compat_tmp, "criu")


@pytest.fixture(scope="module")
def spice_dumped(criu_bin: Path, compat_tmp: Path) -> harness.DumpInfo:
    return _dump(compat_tmp, "spice", spice_dumper)


def test_criu_dump_restores_under_spice(criu_dumped: harness.DumpInfo) -> None:
    for _ in range(2):  # a second restore of the same images: new namespaces again
        pid = spice_restore(criu_dumped.images_dir)
        try:
            _check_restored(criu_dumped, pid)
        finally:
            harness.kill_restored(criu_dumped, pid)


def test_spice_dump_restores_under_criu(spice_dumped: harness.DumpInfo) -> None:
    pid = harness.criu_restore(spice_dumped.images_dir)
    try:
        _check_restored(spice_dumped, pid)
    finally:
        harness.kill_restored(spice_dumped, pid)


def test_spice_dump_restores_under_spice(spice_dumped: harness.DumpInfo) -> None:
    pid = spice_restore(spice_dumped.images_dir)
    try:
        _check_restored(spice_dumped, pid)
    finally:
        harness.kill_restored(spice_dumped, pid)


def test_spice_dump_writes_the_namespaces_as_criu(criu_bin: Path, crit_bin: Path, compat_tmp: Path) -> None:
    """Both tools dump one tree (--leave-running; stopped meanwhile, so that its queues and
    semaphores hold still): the same ids, the same namespace images, each equal under real crit and
    byte for byte; they hold the names, limits and objects the tree set."""
    wl = harness.start_workload("utsipc", compat_tmp / "utsipc" / "both")
    try:
        for p in wl.pids:
            os.kill(p, signal.SIGSTOP)
        for p in wl.pids:
            _wait(lambda p=p: harness.process_state(p) == "T", f"{p} stopped")
        theirs, ours = wl.rundir / "criu-images", wl.rundir / "spice-images"
        harness.criu_dump(wl.pid, theirs, leave_running=True)
        spice_dumper(wl.pid, ours, leave_running=True)
        pid = wl.pid
        ids = _crit(crit_bin, theirs / f"ids-{pid}.img")["entries"][0]
        assert _crit(crit_bin, ours / f"ids-{pid}.img")["entries"][0] == ids
        root = _crit(crit_bin, theirs / "inventory.img")["entries"][0]["root_ids"]
        assert _crit(crit_bin, ours / "inventory.img")["entries"][0]["root_ids"] == root
        assert ids["uts_ns_id"] != root["uts_ns_id"] and ids["ipc_ns_id"] != root["ipc_ns_id"]
        names = [f"utsns-{ids['uts_ns_id']}.img"] + [f"ipcns-{k}-{ids['ipc_ns_id']}.img" for k in ("var", "msg", "sem")]
        for d in (theirs, ours):  # (no ipcns-shm image: the namespace holds no shared memory)
            assert sorted(p.name for p in d.glob("*ns-*.img") if not p.name.startswith("timens")) == sorted(names)
        for name in names:
            assert _crit(crit_bin, ours / name) == _crit(crit_bin, theirs / name), name
            assert (ours / name).read_bytes() == (theirs / name).read_bytes(), name
            assert json.loads(spice("crit", "show", str(ours / name)).stdout) == _crit(crit_bin, theirs / name)
        line = wl.last_ticks()["main"].fields
        uts = _crit(crit_bin, ours / names[0])["entries"][0]
        assert (uts["nodename"], uts["domainname"]) == (line["host"], line["dom"])
        var = _crit(crit_bin, ours / names[1])["entries"][0]
        assert ",".join(map(str, var["sem_ctls"])) == line["sem"]
        assert (var["msg_ctlmax"], var["shm_ctlmni"], var["mq_msg_max"]) == \
            (int(line["msgmax"]), int(line["shmmni"]), int(line["mqmax"]))
        assert not {"msg_next_id", "sem_next_id", "shm_next_id"} & set(var)  # -1 (consumed): not written
        queues = _crit(crit_bin, ours / names[2])["entries"]
        fixed = [q for q in queues if q["desc"]["key"]]  # (the other one is IPC_PRIVATE: key 0)
        assert len(queues) == 2 and len(fixed) == 1 and fixed[0]["qnum"] == 3, queues
        assert fixed[0]["desc"]["id"] != 0  # (its id came from the msg_next_id it set)
        assert [m["msize"] for m in fixed[0]["extra"][::2]] == [5, 0, len(line["queued"].split("/")[2]) - 2]
        sems = _crit(crit_bin, ours / names[3])["entries"]
        assert len(sems) == 1 and sems[0]["nsems"] == 2 and sems[0]["extra"][0] == int(line["semv"])
        assert sems[0]["extra"][1] == int(line["semc"])
        for p in wl.pids:
            os.kill(p, signal.SIGCONT)
        harness.assert_continues(wl, wl.pids, new_ticks=2)
    finally:
        wl.kill()


def _wait(cond, what: str) -> None:
    deadline = time.monotonic() + harness.scaled(10)
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_sysv_shared_memory_is_refused_by_name(criu_bin: Path, crit_bin: Path, compat_tmp: Path) -> None:
    """spice dump refuses a tree whose ipc namespace holds a SysV shared memory segment, naming it,
    and the tree runs on; criu dumps it (ipcns-shm image), and spice restore refuses that image by
    name, leaving no task behind."""
    rundir = compat_tmp / "utsipc" / "sysv-shm"
    rundir.mkdir(parents=True, exist_ok=True)
    harness.make_subreaper()
    proc = subprocess.Popen(["unshare", "-u", "-i", "sh", "-c", "ipcmk -M 4096 >/dev/null && exec sleep 600"],
                            cwd=rundir, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait(lambda: proc.poll() is None and os.readlink(f"/proc/{proc.pid}/exe").endswith("sleep"),
              "the ipcmk tree")
        images = rundir / "spice-images"
        images.mkdir()
        refused = assert_one_error(spice("dump", "-t", str(proc.pid), "-D", str(images), "-o", "dump.log",
                                         check=False), "dump")
        assert not (images / "inventory.img").exists()
        assert harness.process_state(proc.pid) == "S", harness.process_state(proc.pid)
        harness.criu_dump(proc.pid, rundir / "criu-images")
        harness.reap([proc.pid])
        ipc_id = _crit(crit_bin, rundir / "criu-images" / f"ids-{proc.pid}.img")["entries"][0]["ipc_ns_id"]
        assert refused.endswith(f"ipc namespace {ipc_id} holds SysV shared memory: not supported"), refused
        imgname = f"ipcns-shm-{ipc_id}.img"
        assert (rundir / "criu-images" / imgname).exists()
        err = assert_one_error(spice("restore", "-D", str(rundir / "criu-images"), "-d", check=False), "restore")
        assert err.endswith(f"ipc namespace {ipc_id} holds SysV shared memory ({imgname}): not supported"), err
        assert not harness.is_running(proc.pid)
    finally:
        if harness.is_running(proc.pid):
            harness.kill_pids([proc.pid])
        harness.reap_zombie_children()


@pytest.mark.parametrize("image,field,value,why", [
    ("ipcns-var", "mq_msg_max", 0, "fs/mqueue/msg_max = 0: Invalid argument"),
    ("utsns", "nodename", "n" * 65, "nodename is longer than 64 bytes"),
], ids=["bad-sysctl", "long-hostname"])
def test_a_namespace_that_cannot_be_made_fails_the_restore_cleanly(
        criu_dumped: harness.DumpInfo, tmp_path: Path, image: str, field: str, value: object, why: str) -> None:
    """An image value the kernel (or the format) refuses: one error line naming it, exit 1, and no
    task of the tree left behind."""
    import shutil

    from spice_criu.images import codec

    images = tmp_path / "images"
    shutil.copytree(criu_dumped.images_dir, images, ignore=shutil.ignore_patterns("*.log", "*.pid"))
    path = next(images.glob(f"{image}-*.img"))
    img = codec.load(path)
    setattr(img.entries[0].msg, field, value)
    path.write_bytes(codec.dumps(img))
    err = assert_one_error(spice("restore", "-D", str(images), "-d", check=False), "")
    assert why in err, err
    for pid in criu_dumped.pids:
        assert not harness.is_running(pid), pid
