# SPDX-License-Identifier: MIT
"""Issue 5: the kmod backend against real CRIU 4.2.1 dumps made in the qemu guest (`make kmod-test`).

Every compat workload restored through /dev/spice continues exactly where it was dumped and shows
the same kernel-visible state as a ptrace-backend restore of the same images; a working set is
recorded and replayed (and real CRIU still restores the directory); `--backend auto` picks the
module and falls back when it is unusable; a request the module rejects, or a restore it has to
kill after the teardown, leaves nothing behind; the kernel log stays clean.

These tests need the module: they run inside the guest, where kmod/ci/kmod-ci.sh sets
SPICE_KMOD_GUEST=1. On a host without /dev/spice they are skipped with that reason (they run in
the same `make test`, in the guest).
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from harness import (
    DumpInfo,
    assert_continues,
    criu_dump,
    criu_restore,
    dump_workload,
    http_get,
    kill_restored,
    process_state,
    reap,
    reap_zombie_children,
    scaled,
    start_workload,
)
from spice import REPO, spice
from test_restore_kstate import _snapshot as _kstate_snapshot
from test_restore_kstate import kstate_dump  # noqa: F401 - the fixture, shared with the ptrace test

import spice_criu.restore.run  # noqa: F401 - the restore package in its import order
from spice_criu.images import codec
from spice_criu.restore.signals import SIGACTION_SIGNALS
from spice_criu.restore.workingset import FILE_NAME as WS_FILE

if os.environ.get("SPICE_KMOD_GUEST") != "1":
    pytest.skip("kmod restore tests run inside the qemu guest (make kmod-test)", allow_module_level=True)
if not os.path.exists("/dev/spice"):
    raise RuntimeError("SPICE_KMOD_GUEST=1 but /dev/spice is missing: the spice module is not loaded")

STATS = Path("/sys/class/misc/spice/stats")
_runs = iter(range(1, 1 << 30))


def kstats() -> dict[str, int]:
    return {p.name: int(p.read_text()) for p in STATS.iterdir() if p.name != "reset"}


def restore(images: Path, *extra: str, backend: str = "kmod", check: bool = True,
            env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess[str], int | None, str]:
    """`spice restore -d` with a fresh log and pidfile: (process, restored root pid, log text)."""
    n = next(_runs)
    log, pidfile = images / f"kmod-restore-{n}.log", images / f"kmod-restore-{n}.pid"
    args = ["restore", "-D", str(images), "-d", "-v4", "-o", log.name, "--pidfile", str(pidfile),
            "--backend", backend, *extra]
    if env is None:
        p = spice(*args, check=check, log=log)
    else:
        p = subprocess.run([sys.executable, "-m", "spice_criu", *args], capture_output=True, text=True,
                           cwd=REPO, env=env, stdin=subprocess.DEVNULL, timeout=scaled(120))
    pid = int(pidfile.read_text()) if pidfile.exists() else None
    return p, pid, log.read_text() if log.exists() else ""


# --------------------------------------------------------------------------------------------------
# what a restored tree looks like from /proc (compared between the kmod and the ptrace backend)

STATUS = ("Umask", "SigIgn", "SigCgt", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs",
          "Seccomp", "Uid", "Gid", "Groups", "Threads", "Cpus_allowed_list")
STAT_FIELDS = {"start_code": 26, "end_code": 27, "start_stack": 28, "start_data": 45, "end_data": 46,
               "start_brk": 47, "arg_start": 48, "arg_end": 49, "env_start": 50, "env_end": 51}
_MAPS_RE = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S+) ([0-9a-f]+)(?: \S+:\S+ \d+)?\s*(.*)$")


def normalized_maps(pid: int, images: Path) -> list[tuple[int, int, str, str, int]]:
    return normalize_maps(Path(f"/proc/{pid}/maps").read_text().splitlines(), images)


def normalize_maps(lines: list[str], images: Path) -> list[tuple[int, int, str, str, int]]:
    """/proc/PID/maps lines with the pages image's page-cache mappings folded into the VMA they
    belong to.

    The kmod backend maps the dumped pages of an anonymous private VMA from pages-N.img (several
    kernel VMAs; the pages image shows as their backing file). Anonymous memory ("", [heap],
    [stack] and those pieces) is merged where contiguous with the same protections, and so are
    contiguous pieces of one file mapping, for both backends alike. Lines may lack dev and inode."""
    out: list[list] = []
    for line in lines:
        m = _MAPS_RE.match(line)
        assert m, line
        lo, hi, perms, off, path = int(m[1], 16), int(m[2], 16), m[3], int(m[4], 16), m[5]
        img = path.startswith(str(images)) and os.path.basename(path).startswith("pages-")
        kind = "anon" if img or path in ("", "[heap]", "[stack]") else path
        off = 0 if kind == "anon" else off
        prev = out[-1] if out else None
        if (prev and prev[1] == lo and prev[2] == perms and prev[3] == kind
                and (kind == "anon" or off == prev[4] + (lo - prev[0]))):
            prev[1] = hi
        else:
            out.append([lo, hi, perms, kind, off])
    return [tuple(e) for e in out]


def proc_state(pid: int, images: Path) -> dict[str, object]:
    status = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in STATUS:
            status[k] = " ".join(v.split())
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tids = sorted(os.listdir(f"/proc/{pid}/task"), key=int)
    return {
        "status": status,
        "mm": {k: stat[i - 3] for k, i in STAT_FIELDS.items()},
        "maps": normalized_maps(pid, images),
        "exe": os.readlink(f"/proc/{pid}/exe"),
        "cwd": os.readlink(f"/proc/{pid}/cwd"),
        "cmdline": Path(f"/proc/{pid}/cmdline").read_bytes(),
        "environ": Path(f"/proc/{pid}/environ").read_bytes(),
        "auxv": Path(f"/proc/{pid}/auxv").read_bytes(),
        "limits": Path(f"/proc/{pid}/limits").read_text(),
        "personality": Path(f"/proc/{pid}/personality").read_text(),
        "threads": [(t, Path(f"/proc/{pid}/task/{t}/comm").read_text()) for t in tids],
        "fds": sorted((int(fd), re.sub(r":\[\d+\]$", "", os.readlink(f"/proc/{pid}/fd/{fd}")))
                      for fd in os.listdir(f"/proc/{pid}/fd")),
    }


def tree_state(info: DumpInfo) -> dict[int, dict[str, object]]:
    return {pid: proc_state(pid, info.images_dir) for pid in info.pids}


def _diff(a: dict, b: dict) -> str:
    out = []
    for pid in a:
        for key in a[pid]:
            x, y = a[pid][key], b.get(pid, {}).get(key)
            if x == y:
                continue
            if isinstance(x, list) and isinstance(y, list):
                only_a = [_hex(e) for e in x if e not in y]
                only_b = [_hex(e) for e in y if e not in x]
                out.append(f"pid {pid} {key}: only after kmod {only_a}; only after ptrace {only_b}")
            else:
                out.append(f"pid {pid} {key}:\n  kmod   {x}\n  ptrace {y}")
    return "\n".join(out)


def _hex(e: object) -> object:
    if isinstance(e, tuple) and len(e) == 5:
        return (f"{e[0]:x}-{e[1]:x}", *e[2:])
    return e


# --------------------------------------------------------------------------------------------------
# every workload: kmod restore continues, and matches a ptrace restore of the same images


def test_kmod_restores_like_ptrace(workload_name: str, criu_dumps: dict[str, DumpInfo]) -> None:
    info = criu_dumps[workload_name]
    before = kstats()
    _, pid, log = restore(info.images_dir, backend="kmod")
    assert pid == info.pid
    assert "restore backend: kmod" in log and "installed by /dev/spice" in log, log
    kmod_state = tree_state(info)
    cont = assert_continues(info, pid)
    assert cont.first_tick == {r: t + 1 for r, t in info.last_ticks.items()}
    assert cont.pids == info.roles
    after = kstats()
    assert after["restores_ok"] - before["restores_ok"] == len(info.pids)
    assert after["pages_mapped"] + after["pages_copied"] > before["pages_mapped"] + before["pages_copied"]
    assert after["files_held"] == 0 and after["requests_live"] == 0
    kill_restored(info, pid)

    _, pid, log = restore(info.images_dir, backend="ptrace")
    assert "restore backend: ptrace" in log, log
    ptrace_state = tree_state(info)
    assert_continues(info, pid)
    kill_restored(info, pid)
    assert kmod_state == ptrace_state, _diff(kmod_state, ptrace_state)


def test_kmod_restores_kernel_state(kstate_dump) -> None:  # noqa: F811 - the imported fixture
    """The kstate workload (signals, timers, creds, limits, fs, memory attributes, queued data, a
    second thread) through /dev/spice: /proc shows what it showed before the dump."""
    info, before = kstate_dump
    _, pid, log = restore(info.images_dir, backend="kmod")
    assert "installed by /dev/spice" in log, log
    assert_continues(info, pid)
    want = {**before, "maps": normalize_maps(before["maps"], info.images_dir),  # type: ignore[arg-type]
            "fds": _steady_fds(before["fds"])}
    for _ in range(10):  # masks change while the workload's handlers run: a difference must persist
        after = _kstate_snapshot(pid)
        after["maps"] = normalized_maps(pid, info.images_dir)
        after["fds"] = _steady_fds(after["fds"])
        if after == want:
            break
        time.sleep(0.013)
    for key in want:
        assert after[key] == want[key], f"{key} differs after a kmod restore:\nbefore {want[key]}\nafter  {after[key]}"
    kill_restored(info, pid)


def test_kmod_restores_mapped_ghosts(criu_bin: Path, compat_tmp: Path) -> None:
    """Deleted files only mappings hold (POSIX semaphores): one inode shared by two processes."""
    import fdkinds

    wl = start_workload("shmghost", compat_tmp / "kmod-ghosts")
    info = dump_workload(wl, wl.rundir / "images")
    _, pid, log = restore(info.images_dir, backend="kmod")
    assert "installed by /dev/spice" in log, log
    fdkinds.check_shmghost(info, pid)
    kill_restored(info, pid)


def test_kmod_restores_pty_pairs(compat_tmp: Path) -> None:
    """pty pairs with both ends in the dump and a session on the slave (tmux, `script`): the same
    index, settings and queued data, the session's controlling terminal, pings answered."""
    from test_ptys import check_restored

    wl = start_workload("ptypair", compat_tmp / "kmod-ptys")
    info = dump_workload(wl, wl.rundir / "images")
    _, pid, log = restore(info.images_dir, backend="kmod")
    assert "installed by /dev/spice" in log, log
    check_restored(info, pid)
    kill_restored(info, pid)


def _steady_fds(fds: object) -> list:
    """The workload reads /proc/self/smaps now and then: that fd comes and goes."""
    return [(fd, what) for fd, what in fds if not what.startswith("/proc/")]  # type: ignore[union-attr]


# --------------------------------------------------------------------------------------------------
# working set: record (until the function answered a request), replay, and CRIU ignores the file


def _record(info: DumpInfo, invoke) -> tuple[int, subprocess.CompletedProcess[str], str]:
    images = info.images_dir
    n = next(_runs)
    log, pidfile = images / f"kmod-record-{n}.log", images / f"kmod-record-{n}.pid"
    cmd = [sys.executable, "-m", "spice_criu", "restore", "-D", str(images), "-d", "-v4", "-o", log.name,
           "--pidfile", str(pidfile), "--backend", "kmod", "--record-working-set", "--record-timeout", "600"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + scaled(120)
        while not (pidfile.exists() and pidfile.read_text()):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no pidfile from the recording restore"
            time.sleep(0.01)
        pid = int(pidfile.read_text())
        invoke(pid)
        proc.send_signal(signal.SIGUSR1)
        out, err = proc.communicate(timeout=scaled(120))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return pid, subprocess.CompletedProcess(cmd, proc.returncode, out, err), log.read_text()


def test_working_set_record_and_replay(criu_dumps: dict[str, DumpInfo]) -> None:
    info = criu_dumps["httpd"]
    images = info.images_dir
    (images / WS_FILE).unlink(missing_ok=True)
    before = kstats()
    answers = []
    pid, p, log = _record(info, lambda pid: answers.append(http_get(info.port)))
    assert p.returncode == 0, (p.stdout, p.stderr, log)
    assert answers and answers[0]["pid"] == str(pid)
    assert "prefault none" in log and "SIGUSR1" in log, log
    doc = json.loads((images / WS_FILE).read_text())
    assert doc["format"] == "spice-working-set" and doc["version"] == 1
    rec = doc["tasks"][str(pid)]
    ranges = [(int(s, 16), n, a) for s, n, a in rec["ranges"]]
    assert rec["pages"] == sum(n for _, n, _ in ranges) > 0
    assert 0 < rec["written"] == sum(n for _, n, a in ranges if a == "w") < rec["pages"]
    assert all(s % 4096 == 0 and n > 0 for s, n, _ in ranges)
    assert all(a[0] + a[1] * 4096 <= b[0] for a, b in zip(ranges, ranges[1:], strict=False)), "unsorted/overlap"
    mid = kstats()
    assert mid["pages_prefaulted"] == before["pages_prefaulted"] and mid["pages_precow"] == before["pages_precow"]
    assert_continues(info, pid)  # recording does not disturb the process
    kill_restored(info, pid)

    # replay: exactly the recorded set is prefaulted, its written pages copied up front
    _, pid, log = restore(images, backend="kmod")
    assert f"prefault working set ({len(ranges)} ranges)" in log or "prefault working set" in log, log
    after = kstats()
    precow, read = (after[k] - mid[k] for k in ("pages_precow", "pages_prefaulted"))
    assert 0 < precow <= rec["written"] and read > 0 and precow + read <= rec["pages"], (precow, read, rec)
    assert after["prefault_errors"] == mid["prefault_errors"]
    # the process runs meanwhile and may free a little of it, but the set is there
    present = _present(pid, ranges)
    assert present >= 0.98 * rec["pages"], f"{present} of {rec['pages']} working-set pages present after restore"
    assert_continues(info, pid)
    kill_restored(info, pid)

    # real CRIU restores a directory holding a working set (it ignores the file), ptrace too
    pid = criu_restore(images)
    assert_continues(info, pid)
    kill_restored(info, pid)
    _, pid, log = restore(images, backend="ptrace")
    assert_continues(info, pid)
    kill_restored(info, pid)

    # a stale recording (other images) is ignored with a warning: everything prefaulted again
    doc["tasks"][str(pid)]["digest"] = "0" * 64
    (images / WS_FILE).write_text(json.dumps(doc))
    _, pid, log = restore(images, backend="kmod")
    assert "recorded for other images; ignored" in log and "prefault all" in log, log
    assert_continues(info, pid)
    kill_restored(info, pid)
    (images / WS_FILE).unlink()


def _present(pid: int, ranges: list[tuple[int, int, str]]) -> int:
    n = 0
    with open(f"/proc/{pid}/pagemap", "rb") as f:
        for start, nr, _ in ranges:
            f.seek(start // 4096 * 8)
            data = f.read(nr * 8)
            n += sum(1 for i in range(0, len(data), 8) if data[i + 7] & 0x80)
    return n


def test_record_needs_the_module(criu_dumps: dict[str, DumpInfo]) -> None:
    info = criu_dumps["counter"]
    p, _, _ = restore(info.images_dir, "--record-working-set", backend="ptrace", check=False)
    assert p.returncode == 1 and "needs the kmod backend" in p.stderr, p.stderr
    assert all(process_state(x) is None for x in info.pids)


# --------------------------------------------------------------------------------------------------
# --backend auto


def test_auto_picks_the_module(criu_dumps: dict[str, DumpInfo]) -> None:
    info = criu_dumps["threads"]
    _, pid, log = restore(info.images_dir, backend="auto")
    assert "restore backend: kmod (/dev/spice, ABI 1)" in log, log
    assert_continues(info, pid)
    kill_restored(info, pid)


def test_auto_without_a_usable_module(criu_dumps: dict[str, DumpInfo]) -> None:
    """/dev/spice that does not answer SPICE_IOC_VERSION (here /dev/null bound over it, in a
    private mount namespace): auto takes ptrace and says why; --backend kmod fails clearly."""
    info = criu_dumps["counter"]
    images = info.images_dir
    n = next(_runs)
    pidfile = images / f"kmod-auto-{n}.pid"
    script = (f"mount --bind /dev/null /dev/spice && exec {sys.executable} -m spice_criu restore -D {images} -d "
              f"-v4 -o kmod-auto-{n}.log --pidfile {pidfile} --backend ")
    p = subprocess.run(["unshare", "-m", "sh", "-c", script + "kmod"], capture_output=True, text=True, cwd=REPO,
                       timeout=scaled(120))
    assert p.returncode == 1, (p.stdout, p.stderr)
    assert p.stderr.startswith("Error (spice/restore): --backend kmod: /dev/spice: SPICE_IOC_VERSION failed"), p.stderr
    assert all(process_state(x) is None for x in info.pids)
    p = subprocess.run(["unshare", "-m", "sh", "-c", script + "auto"], capture_output=True, text=True, cwd=REPO,
                       timeout=scaled(120))
    assert p.returncode == 0, (p.stdout, p.stderr)
    log = (images / f"kmod-auto-{n}.log").read_text()
    assert "restore backend: ptrace (/dev/spice: SPICE_IOC_VERSION failed" in log, log
    pid = int(pidfile.read_text())
    assert_continues(info, pid)
    kill_restored(info, pid)


# --------------------------------------------------------------------------------------------------
# failures: a rejected request, a restore killed after the teardown


def _with_bad_sigaction(info: DumpInfo, dst: Path, sig: int = 10) -> Path:
    """A copy of the images whose signal `sig` action has a flag bit no kernel knows: the module
    refuses it; rt_sigaction() would silently drop it."""
    shutil.copytree(info.images_dir, dst, ignore=shutil.ignore_patterns("*.log", "*.pid", "stats-*", WS_FILE))
    core = dst / f"core-{info.pid}.img"
    img = codec.load(core)
    img.entries[0].msg.tc.sigactions[SIGACTION_SIGNALS.index(sig)].flags |= 1 << 40
    core.write_bytes(codec.dumps(img))
    return dst


def test_rejected_request_leaves_nothing(criu_dumps: dict[str, DumpInfo], tmp_path: Path) -> None:
    info = criu_dumps["counter"]
    images = _with_bad_sigaction(info, tmp_path / "badsig")
    before = kstats()
    p, _, log = restore(images, backend="kmod", check=False)
    assert p.returncode == 1, (p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert lines == [f"Error (spice/restore): task {info.pid}: /dev/spice rejected the action of signal 10 "
                     f"(core-{info.pid}.img): Invalid argument"], p.stderr
    reap_zombie_children()
    assert all(process_state(x) is None for x in info.pids), "a half-restored task survived"
    after = kstats()
    assert after["restores_rejected"] == before["restores_rejected"] + 1
    assert after["restores_ok"] == before["restores_ok"] and after["restores_killed"] == before["restores_killed"]
    assert after["files_held"] == 0 and after["requests_live"] == 0
    # auto: the module's dry run refuses it, that task falls back to the ptrace backend
    info2 = _moved(info, images)
    _, pid, log = restore(images, backend="auto")
    assert "rejected the action of signal 10" in log and "restoring task" in log and "ptrace backend" in log, log
    assert_continues(info2, pid)
    kill_restored(info2, pid)


def _moved(info: DumpInfo, images: Path) -> DumpInfo:
    import dataclasses

    return dataclasses.replace(info, images_dir=images, resume_offset=info.mark())


BIGVM_C = r"""
#include <sys/mman.h>
#include <unistd.h>
int main(void)
{
	if (mmap(0, 8UL << 30, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0) == MAP_FAILED)
		return 1;
	for (;;)
		pause();
}
"""


def test_killed_after_teardown_leaves_nothing(criu_bin: Path, tmp_path: Path) -> None:
    """An 8 GiB reservation restored under a 4 GiB RLIMIT_AS: the module's build fails after the old
    address space is gone, so it kills the task; spice says so and leaves nothing behind."""
    src, exe = tmp_path / "bigvm.c", tmp_path / "bigvm"
    src.write_text(BIGVM_C)
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(src)], check=True)
    proc = subprocess.Popen([str(exe)], cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    images = tmp_path / "images"
    try:
        time.sleep(0.2)
        criu_dump(proc.pid, images)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    limit = 4 << 30
    before = kstats()
    p = subprocess.run([sys.executable, "-m", "spice_criu", "restore", "-D", str(images), "-d", "--backend", "kmod"],
                       capture_output=True, text=True, cwd=REPO, timeout=scaled(120),
                       preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)))
    assert p.returncode == 1, (p.stdout, p.stderr)
    assert re.match(rf"Error \(spice/restore\): task {proc.pid} was killed by /dev/spice after its old address "
                    rf"space was torn down: spice: restore of pid {proc.pid} failed after teardown \(-12\)",
                    p.stderr), p.stderr
    reap([proc.pid], timeout=10)
    assert process_state(proc.pid) is None
    after = kstats()
    assert after["restores_killed"] == before["restores_killed"] + 1
    assert after["files_held"] == 0 and after["requests_live"] == 0


# --------------------------------------------------------------------------------------------------


def test_zz_kernel_log_clean() -> None:
    """Last: nothing above made the kernel warn (kmod-ci.sh checks the console log too)."""
    log = subprocess.run(["dmesg"], capture_output=True, text=True, check=True).stdout
    bad = [ln for ln in log.splitlines() if re.search(r"WARNING:|BUG:|Oops|Call Trace:|general protection", ln)]
    assert not bad, "\n".join(bad)
    s = kstats()
    assert s["files_held"] == 0 and s["requests_live"] == 0
    assert s["restores_ok"] > 0
