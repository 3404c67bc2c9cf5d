# SPDX-License-Identifier: MIT
"""Default runc containers (their own pid, net, ipc, uts and mount namespaces) checkpointed and
restored with spice as runc's `criu`, against real CRIU 4.2.1 both ways.

The bundle is `runc spec`'s own, untouched but for the command: runc's mounts (proc, a tmpfs /dev
with devpts, mqueue and shm, sysfs, cgroup), its masked and read-only paths, hostname "runc". The
container writes a mark into its /dev/shm (a tmpfs whose content goes in the images) and then
ticks into a pipe read by a `cat` outside, as containerd hands it stdio (a file outside the
container's mount namespace could not be named in the images). After each restore the container
continues from the tick after the dump, and `runc exec` finds its hostname and the mark.

Each case runs as a driver process (this file as a script) under `unshare -m`, a child subreaper
that reaps the container's init as containerd-shim would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_rpc_runc import TICK, _bundle, _reap_all, _ticks, _wait_ticks, install_criu_shim
from test_rpc_runc import runc as runc  # noqa: F401 (the fixture)

HERE = Path(__file__).resolve().parent
MARK = "spice-was-here"
CMD = f"echo {MARK} > /dev/shm/mark; {TICK}"


def _start_reader(out: Path) -> tuple[int, subprocess.Popen]:
    """A pipe whose write end becomes the container's stdout/stderr, drained into `out` by cat."""
    r, w = os.pipe()
    cat = subprocess.Popen(["cat"], stdin=r, stdout=open(out, "a"))  # noqa: SIM115 (cat holds it)
    os.close(r)
    return w, cat


def drive(case: str, base: Path, shim_dir: Path, criu_dir: Path) -> dict:
    """case: '<dumper>-<restorer>' with each 'spice' or 'criu'. Returns what happened, as JSON."""
    import ctypes

    if ctypes.CDLL(None).prctl(36, 1, 0, 0, 0) != 0:
        raise OSError("PR_SET_CHILD_SUBREAPER")
    dumper, restorer = case.split("-")
    bundle = _bundle(base, namespaces=True)
    cfg = json.loads((bundle / "config.json").read_text())
    cfg["process"]["args"] = ["sh", "-c", CMD]
    (bundle / "config.json").write_text(json.dumps(cfg, indent=1))
    subprocess.run(["mount", "--make-rprivate", "/"], check=True)
    state, images, work, out = base / "runc-state", base / "checkpoint", base / "work", base / "ctr.out"
    runc_ = ["runc", "--root", str(state)]
    envs = {"spice": dict(os.environ, PATH=f"{shim_dir}:{os.environ['PATH']}"),
            "criu": dict(os.environ, PATH=f"{criu_dir}:{os.environ['PATH']}")}
    ctr = f"spice-ct-{os.getpid()}"
    res: dict = {"case": case}
    readers = []
    w, cat = _start_reader(out)
    readers.append(cat)
    subprocess.run([*runc_, "run", "-d", ctr], cwd=bundle, stdin=subprocess.DEVNULL, stdout=w, stderr=w,
                   check=True, timeout=60)
    os.close(w)
    try:
        pid = json.loads(subprocess.run([*runc_, "state", ctr], capture_output=True, text=True,
                                        check=True).stdout)["pid"]
        res["pid"] = pid
        _wait_ticks(out, -1)
        p = subprocess.run([*runc_, "checkpoint", "--image-path", str(images), "--work-path", str(work), ctr],
                           env=envs[dumper], capture_output=True, text=True, timeout=120)
        res["checkpoint"] = (p.returncode, p.stderr[-500:])
        res["dump_log"] = (work / "dump.log").read_text()[-3000:] if (work / "dump.log").exists() else ""
        if p.returncode != 0:
            return res
        deadline = time.monotonic() + 20
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            _reap_all()
            time.sleep(0.01)
        cat.wait(timeout=20)  # every writer is gone: the dumped container holds no end of the pipe
        last = _ticks(out)[-1]
        res["last"] = last
        w, cat = _start_reader(out)
        readers.append(cat)
        p = subprocess.run([*runc_, "restore", "-d", "--image-path", str(images), "--work-path", str(work), ctr],
                           cwd=bundle, env=envs[restorer], stdin=subprocess.DEVNULL, stdout=w, stderr=w,
                           capture_output=False, timeout=120)
        os.close(w)
        res["restore"] = p.returncode
        res["restore_log"] = (work / "restore.log").read_text()[-3000:] if (work / "restore.log").exists() else ""
        if p.returncode == 0:
            res["after"] = _wait_ticks(out, last)[:3]
            st = json.loads(subprocess.run([*runc_, "state", ctr], capture_output=True, text=True,
                                           check=True).stdout)
            res["restored_status"] = st["status"]
            res["restored_pid"] = st["pid"]
            res["ns_new"] = all(os.readlink(f"/proc/{st['pid']}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}")
                                for ns in ("pid", "net", "ipc", "uts", "mnt"))
            ex = subprocess.run([*runc_, "exec", ctr, "sh", "-c", "hostname; cat /dev/shm/mark; echo $$"],
                                capture_output=True, text=True, timeout=60)
            res["exec"] = ex.stdout.split()
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


def _run_case(case: str, tmp_path: Path, shim_dir: Path, criu_dir: Path) -> dict:
    p = subprocess.run(["unshare", "-m", "--propagation", "private", sys.executable, __file__, case,
                        str(tmp_path), str(shim_dir), str(criu_dir)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"driver failed ({p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}"
    return json.loads(p.stdout.strip().splitlines()[-1])


def _assert_continues(res: dict) -> None:
    assert res["checkpoint"][0] == 0, res
    assert res["restore"] == 0, res["restore_log"]
    assert res["after"] == [res["last"] + 1, res["last"] + 2, res["last"] + 3], res
    assert res["restored_status"] == "running" and res["ns_new"], res
    # inside: the hostname runc gave it, the tmpfs mark, and `runc exec`'s shell is not pid 1
    assert res["exec"][:2] == ["runc", MARK] and res["exec"][2] != "1", res


@pytest.mark.usefixtures("runc")
def test_spice_checkpoint_spice_restore(criu_bin: Path, tmp_path: Path, compat_tmp: Path) -> None:
    res = _run_case("spice-spice", tmp_path, install_criu_shim(compat_tmp / "shim-ct").parent, criu_bin.parent)
    assert "(spice-criu" in res["dump_log"], res["dump_log"]
    _assert_continues(res)
    assert "(spice-criu" in res["restore_log"]


@pytest.mark.usefixtures("runc")
def test_spice_checkpoint_criu_restore(criu_bin: Path, tmp_path: Path, compat_tmp: Path) -> None:
    res = _run_case("spice-criu", tmp_path, install_criu_shim(compat_tmp / "shim-ct").parent, criu_bin.parent)
    _assert_continues(res)
    assert "(spice-criu" not in res["restore_log"] and "Restore finished successfully" in res["restore_log"]


@pytest.mark.usefixtures("runc")
def test_criu_checkpoint_spice_restore(criu_bin: Path, tmp_path: Path, compat_tmp: Path) -> None:
    res = _run_case("criu-spice", tmp_path, install_criu_shim(compat_tmp / "shim-ct").parent, criu_bin.parent)
    assert "(spice-criu" not in res["dump_log"], res["dump_log"]
    _assert_continues(res)
    assert "(spice-criu" in res["restore_log"]


if __name__ == "__main__":
    print(json.dumps(drive(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))))
