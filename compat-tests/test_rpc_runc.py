# SPDX-License-Identifier: MIT
"""Real runc with spice as its `criu` (first in $PATH, installed by `make install-criu-shim`).

runc (Debian's 1.1.x, `make rpc-deps`) runs a busybox container, then `runc checkpoint` talks to spice
over swrk: VERSION, DUMP with runc's whole option set (work dir, notify scripts, cgroups, externals,
ext_mnt for every mount, orphan_pts_master, root...). Here, a container with no namespaces of its own
(runc chroots into the rootfs, run inside a private mount namespace of the test where /proc is bound
into the rootfs) is checkpointed by spice, and real CRIU or spice `runc restore`s it: the container
continues from the tick after the dump. Default containers, with all their namespaces, are in
test_ns_mnt.py.

Each case runs as a driver process (this file as a script) under `unshare -m`, a child subreaper
that reaps the container's init the way containerd-shim would.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_rpc_pycriu import install_criu_shim

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TICK = "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.05; done"


# ------------------------------------------------------------------------------------------ the driver


def _bundle(base: Path, namespaces: bool) -> Path:
    bundle = base / "bundle"
    rootfs = bundle / "rootfs"
    for d in ("bin", "proc", "dev", "sys", "tmp"):
        (rootfs / d).mkdir(parents=True, exist_ok=True)
    shutil.copy("/usr/bin/busybox", rootfs / "bin" / "busybox")
    for tool in ("sh", "sleep", "echo"):
        (rootfs / "bin" / tool).symlink_to("busybox")
    subprocess.run(["runc", "spec"], cwd=bundle, check=True)
    cfg = json.loads((bundle / "config.json").read_text())
    cfg["process"]["terminal"] = False
    cfg["process"]["args"] = ["sh", "-c", TICK]
    cfg["root"]["readonly"] = False
    if not namespaces:  # what spice can dump: every namespace the host's, runc chroots
        cfg["linux"]["namespaces"] = []
        cfg.pop("hostname", None)
        cfg["mounts"] = []
        for k in ("maskedPaths", "readonlyPaths"):
            cfg["linux"].pop(k, None)
    (bundle / "config.json").write_text(json.dumps(cfg, indent=1))
    return bundle


def _ticks(out: Path) -> list[int]:
    words = (line.removeprefix("tick ") for line in out.read_text().splitlines())
    return [int(w) for w in words if w.isdigit()]


def _wait_ticks(out: Path, after: int, n: int = 3, timeout: float = 20) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = [t for t in _ticks(out) if t > after]
        if len(got) >= n:
            return got
        time.sleep(0.02)
    raise TimeoutError(f"no {n} ticks after {after} in {out}: {out.read_text()[-200:]}")


def _reap_all() -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass


def drive(case: str, base: Path, shim_dir: Path, criu_dir: Path) -> dict:
    """Run in a private mount namespace as a subreaper; returns what happened, as JSON for the test."""
    if ctypes.CDLL(None).prctl(36, 1, 0, 0, 0) != 0:
        raise OSError("PR_SET_CHILD_SUBREAPER")
    bundle = _bundle(base, namespaces=False)
    subprocess.run(["mount", "--make-rprivate", "/"], check=True)
    subprocess.run(["mount", "--bind", "/proc", str(bundle / "rootfs" / "proc")], check=True)
    state, images, work, out = base / "runc-state", base / "checkpoint", base / "work", base / "ctr.out"
    runc = ["runc", "--root", str(state)]
    spice_env = dict(os.environ, PATH=f"{shim_dir}:{os.environ['PATH']}")
    criu_env = dict(os.environ, PATH=f"{criu_dir}:{os.environ['PATH']}")  # real CRIU, whatever PATH held
    ctr = f"spice-rpc-{os.getpid()}"  # unique: its cgroup too
    res: dict = {"case": case}
    with open(out, "w") as f:
        subprocess.run([*runc, "run", "-d", ctr], cwd=bundle, stdin=subprocess.DEVNULL, stdout=f, stderr=f,
                       check=True, timeout=60)
    try:
        pid = json.loads(subprocess.run([*runc, "state", ctr], capture_output=True, text=True,
                                        check=True).stdout)["pid"]
        res["pid"] = pid
        res["cgroups"] = Path(f"/proc/{pid}/cgroup").read_text()
        _wait_ticks(out, -1)
        p = subprocess.run([*runc, "checkpoint", "--image-path", str(images), "--work-path", str(work), ctr],
                           env=spice_env, capture_output=True, text=True, timeout=120)
        res["checkpoint"] = (p.returncode, p.stderr[-500:])
        res["dump_log"] = (work / "dump.log").read_text() if (work / "dump.log").exists() else ""
        deadline = time.monotonic() + 20
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            _reap_all()  # the dumped init was ours (re-parented): its pid must be free for the restore
            time.sleep(0.01)
        last = _ticks(out)[-1]
        time.sleep(0.2)
        res["quiet_after_dump"] = _ticks(out)[-1] == last
        env = spice_env if case == "spice" else criu_env
        p = subprocess.run([*runc, "restore", "-d", "--image-path", str(images), "--work-path", str(work), ctr],
                           cwd=bundle, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
        res["restore"] = (p.returncode, p.stderr[-500:])
        res["restore_log"] = (work / "restore.log").read_text() if (work / "restore.log").exists() else ""
        if p.returncode == 0:
            res["after"] = _wait_ticks(out, last)[:3]
            st = json.loads(subprocess.run([*runc, "state", ctr], capture_output=True, text=True,
                                           check=True).stdout)
            res["restored_pid"], res["restored_status"] = st["pid"], st["status"]
            res["restored_cgroups"] = Path(f"/proc/{st['pid']}/cgroup").read_text()
        res["last"] = last
        return res
    finally:
        subprocess.run([*runc, "kill", ctr, "KILL"], capture_output=True)
        deadline = time.monotonic() + 10
        while subprocess.run([*runc, "delete", "-f", ctr], capture_output=True).returncode != 0 \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        _reap_all()


# ------------------------------------------------------------------------------------------ the tests


@pytest.fixture(scope="module")
def runc() -> str:
    """runc and a static busybox, installed by `make rpc-deps` (Debian packages) when missing."""
    if not (shutil.which("runc") and Path("/usr/bin/busybox").exists()):
        p = subprocess.run(["make", "-s", "--no-print-directory", "rpc-deps"], cwd=REPO, capture_output=True,
                           text=True, timeout=600)
        if p.returncode != 0:
            pytest.fail(f"make rpc-deps (runc, busybox-static) failed:\n{p.stdout}\n{p.stderr}", pytrace=False)
    path = shutil.which("runc")
    if not path:
        pytest.fail("runc is not installed", pytrace=False)
    return path


@pytest.fixture(scope="module")
def shim_dir(compat_tmp: Path) -> Path:
    return install_criu_shim(compat_tmp / "criu-shim-runc").parent


def _run_case(case: str, tmp_path: Path, shim_dir: Path, criu_dir: Path) -> dict:
    p = subprocess.run(["unshare", "-m", "--propagation", "private", sys.executable, __file__, case,
                        str(tmp_path), str(shim_dir), str(criu_dir)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"driver failed ({p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}"
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_runc_checkpoint_by_spice_restores_under_criu(runc: str, shim_dir: Path, criu_bin: Path,
                                                      tmp_path: Path) -> None:
    """`runc checkpoint` with spice as criu (the whole runc request and NOTIFY flow), then `runc restore`
    with real CRIU 4.2.1 from $PATH: the container continues from the tick after the dump."""
    res = _run_case("checkpoint", tmp_path, shim_dir, criu_bin.parent)
    assert res["checkpoint"][0] == 0, res
    log = res["dump_log"]
    assert "(spice-criu" in log and "RPC: dump request" in log and "RPC: notify post-dump" in log, log[-2000:]
    assert "Dumping finished successfully" in log
    assert res["quiet_after_dump"], "the container kept writing after spice's checkpoint"
    assert res["restore"][0] == 0, res
    assert "(spice-criu" not in res["restore_log"] and "Restore finished successfully" in res["restore_log"]
    assert res["after"] == [res["last"] + 1, res["last"] + 2, res["last"] + 3], res
    assert res["restored_pid"] == res["pid"] and res["restored_status"] == "running"
    assert res["restored_cgroups"] == res["cgroups"], "the container is back in its cgroups"


def test_runc_checkpoint_and_restore_by_spice(runc: str, shim_dir: Path, criu_bin: Path, tmp_path: Path) -> None:
    """`runc checkpoint` and `runc restore` both with spice as criu: rst_sibling, post-restore pid,
    root = runc's criu-root bind mount (ignored: no mount namespace in the images)."""
    res = _run_case("spice", tmp_path, shim_dir, criu_bin.parent)
    assert res["checkpoint"][0] == 0, res
    assert res["restore"][0] == 0, res["restore_log"][-3000:]
    assert "(spice-criu" in res["restore_log"] and "RPC: notify post-restore" in res["restore_log"]
    assert res["after"] == [res["last"] + 1, res["last"] + 2, res["last"] + 3], res
    assert res["restored_pid"] == res["pid"] and res["restored_status"] == "running"
    assert res["restored_cgroups"] == res["cgroups"], "the container is back in its cgroups"


if __name__ == "__main__":
    result = drive(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
    print(json.dumps(result))
