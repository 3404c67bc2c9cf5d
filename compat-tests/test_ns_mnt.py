# SPDX-License-Identifier: MIT
"""The tree's own mount namespace, runc-style: a container with only runc's "mount" namespace, and
runc's default container (`runc spec` untouched: its own pid, net, ipc, uts and mount namespaces).

runc's default mounts stay (proc, a tmpfs /dev with devpts, shm and mqueue, sysfs, cgroup), its
masked paths (tmpfs dirs, /dev/null bound over files) and read-only remounts; runc declares every
bind mount external (RPC ext_mnt) and hands the rootfs over as the RPC root on restore. The
container writes a mark into its /dev/shm (a tmpfs whose content goes into the images as
tmpfs-dev-<dev>.tar.gz.img), starts busybox syslogd (a unix socket bound to its /dev/log) and
ticks into a pipe drained by a `cat` outside (a file outside the container's mount namespace
could not be named in the images). Each restore must go on from the tick after the dump, the mark
must be back in /dev/shm, `runc exec logger` must reach syslogd through the socket's own name, and
the same mount points must be there, read-only where they were; each way runs with a read-write
and a read-only rootfs, and as runc's default container (then also: new namespaces of every kind,
and `runc exec` finds the hostname runc gave it).

Each case runs as a driver process (this file as a script) under `unshare -m -i` (an ipc namespace
of its own: the container's mqueue mount shows the driver's queues, none), a child subreaper that
reaps the container's init as containerd-shim would.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_rpc_pycriu import install_criu_shim
from test_rpc_runc import TICK, _bundle, _reap_all, _ticks, _wait_ticks, runc  # noqa: F401 (fixture)

HERE = Path(__file__).resolve().parent
MARK = "spice-was-here"
CMD = f"echo {MARK} > /dev/shm/mark; syslogd -n -O /dev/shm/log & {TICK}"


def _start_reader(out: Path) -> tuple[int, subprocess.Popen]:
    """A pipe whose write end becomes the container's stdout/stderr, drained into `out` by cat."""
    r, w = os.pipe()
    cat = subprocess.Popen(["cat"], stdin=r, stdout=open(out, "a"))  # noqa: SIM115 (cat holds it)
    os.close(r)
    return w, cat


def _state(runc_: list[str], ctr: str) -> dict:
    return json.loads(subprocess.run([*runc_, "state", ctr], capture_output=True, text=True, check=True).stdout)


def drive(case: str, base: Path, shim_dir: Path, criu_dir: Path) -> dict:
    """case: '<dumper>-<restorer>[-ro|-all]', each 'spice' or 'criu' (-ro: a read-only rootfs; -all:
    runc's default container, every namespace). Returns what happened, as JSON."""
    if ctypes.CDLL(None).prctl(36, 1, 0, 0, 0) != 0:
        raise OSError("PR_SET_CHILD_SUBREAPER")
    dumper, restorer, *variant = case.split("-")
    bundle = _bundle(base, namespaces=True)
    for tool in ("syslogd", "logger"):
        (bundle / "rootfs" / "bin" / tool).symlink_to("busybox")
    cfg = json.loads((bundle / "config.json").read_text())
    cfg["process"]["args"] = ["sh", "-c", CMD]
    cfg["root"]["readonly"] = variant in (["ro"], ["all"])  # runc's default: its rootfs mounted read-only
    if variant != ["all"]:
        cfg["linux"]["namespaces"] = [{"type": "mount"}]
        cfg.pop("hostname", None)  # no uts namespace of its own
    (bundle / "config.json").write_text(json.dumps(cfg, indent=1))
    subprocess.run(["mount", "--make-rprivate", "/"], check=True)
    state, images, work, out = base / "runc-state", base / "checkpoint", base / "work", base / "ctr.out"
    runc_ = ["runc", "--root", str(state)]
    envs = {"spice": dict(os.environ, PATH=f"{shim_dir}:{os.environ['PATH']}"),
            "criu": dict(os.environ, PATH=f"{criu_dir}:{os.environ['PATH']}")}
    ctr = f"spice-mnt-{os.getpid()}"
    res: dict = {"case": case}
    w, cat = _start_reader(out)
    readers = [cat]
    subprocess.run([*runc_, "run", "-d", ctr], cwd=bundle, stdin=subprocess.DEVNULL, stdout=w, stderr=w,
                   check=True, timeout=60)
    os.close(w)
    try:
        pid = _state(runc_, ctr)["pid"]
        res["pid"] = pid
        _wait_ticks(out, -1)
        log = Path(f"/proc/{pid}/root/dev/shm/log")
        deadline = time.monotonic() + 10  # syslogd has written its first line: /dev/shm stays as it is
        while not (log.exists() and "syslogd started" in log.read_text()) and time.monotonic() < deadline:
            time.sleep(0.02)
        res["mounts_before"] = _mounts(pid)
        if (dumper, restorer) == ("spice", "criu"):  # criu's images of the same container, to hold spice's against
            p = subprocess.run([*runc_, "checkpoint", "--leave-running", "--image-path", str(base / "criu-images"),
                                "--work-path", str(base / "criu-work"), ctr], env=envs["criu"], capture_output=True,
                               text=True, timeout=120)
            res["criu_checkpoint"] = (p.returncode, p.stderr[-500:])
        p = subprocess.run([*runc_, "checkpoint", "--image-path", str(images), "--work-path", str(work), ctr],
                           env=envs[dumper], capture_output=True, text=True, timeout=120)
        res["checkpoint"] = (p.returncode, p.stderr[-500:])
        res["dump_log"] = (work / "dump.log").read_text()[-4000:] if (work / "dump.log").exists() else ""
        if p.returncode != 0:
            return res
        deadline = time.monotonic() + 20
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            _reap_all()
            time.sleep(0.01)
        cat.wait(timeout=20)  # every writer is gone: the dumped container holds no end of the pipe
        last = _ticks(out)[-1]
        res["last"] = last
        if restorer == "refuse":  # spice's CLI, lacking what runc gives: the root, then the externals
            shim = shim_dir / "criu"
            for name, extra in (("no_root", []), ("no_external", ["--root", str(bundle / "rootfs")])):
                p = subprocess.run([str(shim), "restore", "-D", str(images), "-d", *extra], capture_output=True,
                                   text=True, timeout=120)
                res[name] = (p.returncode, [ln for ln in p.stderr.splitlines() if "Error (" in ln])
            res["left"] = [p for p in os.listdir("/proc") if p.isdigit() and MARK in _cmdline(p)]
            return res
        w, cat = _start_reader(out)
        readers.append(cat)
        p = subprocess.run([*runc_, "restore", "-d", "--image-path", str(images), "--work-path", str(work), ctr],
                           cwd=bundle, env=envs[restorer], stdin=subprocess.DEVNULL, stdout=w, stderr=w,
                           timeout=120)
        os.close(w)
        res["restore"] = p.returncode
        res["restore_log"] = (work / "restore.log").read_text()[-4000:] if (work / "restore.log").exists() else ""
        if p.returncode == 0:
            res["after"] = _wait_ticks(out, last)[:3]
            st = _state(runc_, ctr)
            res["restored_status"] = st["status"]
            res["ns_new"] = sorted(ns for ns in ("pid", "net", "ipc", "uts", "mnt")
                                   if os.readlink(f"/proc/{st['pid']}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}"))
            res["hostname"] = subprocess.run([*runc_, "exec", ctr, "sh", "-c", "hostname"], capture_output=True,
                                             text=True, timeout=60).stdout.strip()
            res["mounts_after"] = _mounts(st["pid"])
            res["mark"] = Path(f"/proc/{st['pid']}/root/dev/shm/mark").read_text().strip()
            # syslogd's socket is bound to /dev/log of the container, by that name
            res["unix_names"] = sorted(ln.split()[-1] for ln in Path(f"/proc/{st['pid']}/net/unix").read_text()
                                       .splitlines()[1:] if ln.split()[-1].endswith("/log"))
            ex = subprocess.run([*runc_, "exec", ctr, "logger", "after-restore"], capture_output=True, text=True,
                                timeout=60)
            deadline = time.monotonic() + 10
            log = Path(f"/proc/{st['pid']}/root/dev/shm/log")
            while "after-restore" not in log.read_text() and time.monotonic() < deadline:
                time.sleep(0.05)
            res["logged"] = (ex.returncode, "after-restore" in log.read_text())
        return res
    finally:
        subprocess.run([*runc_, "kill", ctr, "KILL"], capture_output=True)
        deadline = time.monotonic() + 10
        while subprocess.run([*runc_, "delete", "-f", ctr], capture_output=True).returncode != 0 \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        _reap_all()
        for c in readers:
            c.kill()
            c.wait()


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text()
    except OSError:
        return ""


def _mounts(pid: int) -> list[list[str]]:
    """The container's mounts as it sees them: mount point, per-mount ro/rw (fs type aside: criu binds
    the host's /dev/null, a devtmpfs, over masked files that were binds of the container's)."""
    got = []
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        f = line.split()
        got.append([f[4], ",".join(o for o in f[5].split(",") if o in ("ro", "rw"))])
    return got


def _run_case(case: str, tmp_path: Path, shim_dir: Path, criu_dir: Path) -> dict:
    p = subprocess.run(["unshare", "-m", "-i", "--propagation", "private", sys.executable, __file__, case,
                        str(tmp_path), str(shim_dir), str(criu_dir)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"driver failed ({p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}"
    return json.loads(p.stdout.strip().splitlines()[-1])


def _case(case: str, rootfs: str, tmp_path: Path, compat_tmp: Path, criu_bin: Path) -> dict:
    shim_dir = install_criu_shim(compat_tmp / "shim-mnt").parent
    return _run_case(case + ("" if rootfs == "rw" else f"-{rootfs}"), tmp_path, shim_dir, criu_bin.parent)


def _assert_continues(res: dict) -> None:
    assert res["checkpoint"][0] == 0, res
    assert res["restore"] == 0, res["restore_log"]
    assert res["after"] == [res["last"] + 1, res["last"] + 2, res["last"] + 3], res
    assert res["restored_status"] == "running", res
    if res["case"].endswith("-all"):  # runc's default container: every namespace new, its hostname
        assert res["ns_new"] == ["ipc", "mnt", "net", "pid", "uts"] and res["hostname"] == "runc", res
    else:
        assert res["ns_new"] == ["mnt"], res
    assert res["mark"] == MARK, "the tmpfs content of /dev/shm is back"
    assert res["unix_names"] == ["/dev/log"] and res["logged"] == [0, True], res
    # the same mount points, read-only where they were (criu mounts them in an order of its own)
    assert sorted(res["mounts_after"]) == sorted(res["mounts_before"]), res
    assert res["mounts_before"][0] == ["/", "rw" if res["case"].count("-") == 1 else "ro"], res


@pytest.mark.usefixtures("runc")
@pytest.mark.parametrize("rootfs", ["rw", "ro", "all"])
def test_spice_checkpoint_spice_restore(rootfs: str, criu_bin: Path, tmp_path: Path, compat_tmp: Path) -> None:
    res = _case("spice-spice", rootfs, tmp_path, compat_tmp, criu_bin)
    assert "(spice-criu" in res["dump_log"], res["dump_log"]
    _assert_continues(res)
    assert "(spice-criu" in res["restore_log"]


def _crit(crit: Path, img: Path) -> list[dict]:
    p = subprocess.run([str(crit), "show", str(img)], capture_output=True, text=True, check=True)
    return json.loads(p.stdout)["entries"]


def _tar_list(img: Path) -> list[str]:
    return subprocess.run(["tar", "-tzvf", str(img)], capture_output=True, text=True, check=True).stdout.splitlines()


@pytest.mark.usefixtures("runc")
@pytest.mark.parametrize("rootfs", ["rw", "ro", "all"])
def test_spice_checkpoint_criu_restore(rootfs: str, criu_bin: Path, crit_bin: Path, tmp_path: Path,
                                       compat_tmp: Path) -> None:
    """Also: criu's images of the same container (runc checkpoint --leave-running just before) hold
    the same mountpoints image, tmpfs archives and files' mounts as spice's."""
    res = _case("spice-criu", rootfs, tmp_path, compat_tmp, criu_bin)
    assert "(spice-criu" in res["dump_log"], res["dump_log"]
    assert res["criu_checkpoint"][0] == 0, res["criu_checkpoint"]
    _assert_continues(res)
    assert "(spice-criu" not in res["restore_log"] and "Restore finished successfully" in res["restore_log"]
    ours, theirs = tmp_path / "checkpoint", tmp_path / "criu-images"
    (mnts,) = ours.glob("mountpoints-*.img")
    assert _crit(crit_bin, mnts) == _crit(crit_bin, theirs / mnts.name)
    tars = sorted(p.name for p in ours.glob("tmpfs-*"))
    assert tars == sorted(p.name for p in theirs.glob("tmpfs-*")) and tars
    for name in tars:
        assert _tar_list(ours / name) == _tar_list(theirs / name), name
    regs = [sorted((f["reg"]["name"], f["reg"]["mnt_id"]) for f in _crit(crit_bin, d / "files.img") if "reg" in f)
            for d in (ours, theirs)]
    assert regs[0] == regs[1], regs


@pytest.mark.usefixtures("runc")
@pytest.mark.parametrize("rootfs", ["rw", "ro", "all"])
def test_criu_checkpoint_spice_restore(rootfs: str, criu_bin: Path, tmp_path: Path, compat_tmp: Path) -> None:
    res = _case("criu-spice", rootfs, tmp_path, compat_tmp, criu_bin)
    assert "(spice-criu" not in res["dump_log"], res["dump_log"]
    _assert_continues(res)
    assert "(spice-criu" in res["restore_log"]


@pytest.mark.usefixtures("runc")
def test_restore_without_root_or_externals_is_refused(criu_bin: Path, tmp_path: Path, compat_tmp: Path) -> None:
    """spice's images restored by hand without --root, then without the externals runc declared: one
    error line each naming what is missing, exit 1, and no task of the container left."""
    res = _run_case("spice-refuse", tmp_path, install_criu_shim(compat_tmp / "shim-mnt").parent, criu_bin.parent)
    assert res["checkpoint"][0] == 0, res
    code, errors = res["no_root"]
    assert code == 1 and len(errors) == 1 and "give its root with --root" in errors[0], res
    code, errors = res["no_external"]
    assert code == 1 and len(errors) == 1, res
    assert re.search(r"mount \d+ at /\S+ is external \(/\S+\): give it with --external mnt\[/\S+\]:PATH",
                     errors[0]), res
    assert res["left"] == [], "a task of the failed restores is left"


if __name__ == "__main__":
    print(json.dumps(drive(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))))
