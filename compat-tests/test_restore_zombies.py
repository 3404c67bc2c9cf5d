# SPDX-License-Identifier: MIT
"""Zombies in the dumped tree (a child that exited, or was killed, and was not reaped yet), as a
shell loop's `sleep` often is at dump time: restored in place, with their wait status, so that the
parent reaps exactly what it would have. Both directions against real CRIU 4.2.1."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import harness
import pytest
from spice import spice, spice_restore

WORKLOAD = r"""
import os, signal, sys, time
out, go = sys.argv[1], sys.argv[2]
a = os.fork()
if a == 0:
    os._exit(42)
b = os.fork()
if b == 0:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(30)
    os._exit(1)
def state(p):
    with open(f"/proc/{p}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]
while state(a) != "Z" or state(b) != "Z":
    time.sleep(0.005)
with open(out, "a") as f:
    f.write(f"ready {a} {b}\n")
while not os.path.exists(go):
    time.sleep(0.01)
ra, rb = os.waitpid(a, 0)[1], os.waitpid(b, 0)[1]
with open(out, "a") as f:
    f.write(f"reaped {ra} {rb}\n")
time.sleep(60)
"""


def _wait_line(out: Path, word: str) -> list[str]:
    deadline = time.monotonic() + harness.scaled(20)
    while time.monotonic() < deadline:
        for ln in out.read_text().splitlines() if out.exists() else []:
            if ln.startswith(word + " "):
                return ln.split()[1:]
        time.sleep(0.01)
    raise AssertionError(f"no {word!r} line in {out}: {out.read_text() if out.exists() else ''}")


def _stat(pid: int) -> tuple[str, int]:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return fields[0], int(fields[1])


@pytest.mark.parametrize("dumper,restorer", [("criu", "spice"), ("spice", "spice"), ("spice", "criu")])
def test_zombies_are_restored_with_their_status(dumper: str, restorer: str, criu_bin: Path,
                                                compat_tmp: Path) -> None:
    run = compat_tmp / "zombies" / f"{dumper}-{restorer}"
    images = run / "images"
    images.mkdir(parents=True)
    (run / "wl.py").write_text(WORKLOAD)
    out, go = run / "out", run / "go"
    p = subprocess.Popen([sys.executable, str(run / "wl.py"), str(out), str(go)], cwd=run, start_new_session=True,
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    root = p.pid
    try:
        a, b = map(int, _wait_line(out, "ready"))
        if dumper == "criu":
            harness.criu_dump(root, images)
        else:
            spice("dump", "-t", str(root), "-D", str(images), "-v4", "-o", "dump.log", log=images / "dump.log")
        p.wait(timeout=harness.scaled(10))
        harness.reap([a, b])
        pid = harness.criu_restore(images) if restorer == "criu" else spice_restore(images)
        assert pid == root
        assert _stat(a) == ("Z", root) and _stat(b) == ("Z", root)  # zombies again, of the same parent
        go.write_text("")
        ra, rb = map(int, _wait_line(out, "reaped"))
        assert os.WIFEXITED(ra) and os.WEXITSTATUS(ra) == 42, ra
        assert os.WIFSIGNALED(rb) and os.WTERMSIG(rb) == signal.SIGTERM, rb
    finally:
        harness.kill_pids([root])
        harness.reap_zombie_children()


def test_a_zombie_root_is_refused(compat_tmp: Path) -> None:
    """Nothing to restore: one clear line naming the task (made from a real dump by marking its root dead)."""
    run = compat_tmp / "zombies" / "root"
    images = run / "images"
    images.mkdir(parents=True)
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True,
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        spice("dump", "-t", str(p.pid), "-D", str(images), "-o", "dump.log", log=images / "dump.log")
        p.wait(timeout=harness.scaled(10))
        from spice_criu.images import codec

        img = codec.load(images / f"core-{p.pid}.img")
        img.entries[0].msg.tc.task_state = 2  # TASK_DEAD
        codec.dump(images / f"core-{p.pid}.img", img)
        r = spice("restore", "-D", str(images), "-d", "-o", "restore.log", check=False)
        assert r.returncode == 1 and r.stderr.strip() == \
            f"Error (spice/restore): the root task {p.pid} is a zombie: nothing to restore", r.stderr
        assert not os.path.exists(f"/proc/{p.pid}")
    finally:
        harness.kill_pids([p.pid])
