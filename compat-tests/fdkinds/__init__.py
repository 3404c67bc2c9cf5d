# SPDX-License-Identifier: MIT
"""Purpose-built workloads holding one family of fd kinds each, for the fd-kind compat tests.

They follow the harness conventions (``tick=N role=R pid=P token=T key=value`` lines appended to an
O_APPEND file, ``FAIL ...`` + exit 1 on any inconsistency, cwd = their run dir, stdio to files, a
new session) and are registered in ``harness.SPECS`` on import, so every harness helper
(``start_workload``, ``dump_workload``, ``assert_continues``...) works on them unchanged.

* ``evfds`` (C): eventfd, epoll over a pipe/eventfd/timerfd/signalfd/socket, timerfd, signalfd.
* ``tcppair`` (Python): an established loopback TCP connection between two processes of one tree.
* ``ttyjob`` (Python): a job whose stdio is the slave of a pty held by the test (--shell-job).
* ``inherit`` (Python): a task writing to a pipe whose read end the test holds (--inherit-fd).
* ``tcpclose`` (Python): both ends of a loopback TCP connection in one task, reporting what its
  sockets look like every tick (--tcp-close).
* ``shmghost`` (Python): two processes sharing memory through a deleted file only their mappings
  hold (POSIX semaphores, multiprocessing), a private mapping of another deleted file, and a
  removed directory as the child's cwd.
* ``unixnames`` (Python): unix sockets bound to an absolute path (listening), a relative name, and
  a name since unlinked.
* ``inotify`` (Python): two inotify fds watching a directory, a file and the cwd (one watch
  numbered 5), counting the events it reads.
* ``pidfds`` (Python): pidfds of its child (waited for through it), of itself (non-blocking) and
  of an exited child.
* ``inetidle`` (Python): inet sockets never bound or connected, and a TCP socket only bound.
* ``netlinks`` (Python): a route netlink socket in two multicast groups, asked for the loopback
  link every tick, and a generic netlink socket never bound.
* ``rawicmp`` / ``rawicmp6`` (Python): a raw ICMP / ICMPv6 socket with a type filter, pinging the
  loopback address every tick.
* ``packets`` (Python): a packet socket bound to loopback, capturing the datagram it sends itself
  every tick.
* ``ptypair`` (Python): pty pairs with both ends in the tree: a child session on the slave (its
  controlling terminal, also its member's) answering pings through it, a pair with data queued each way, one in
  packet mode.
* ``ptyhung`` (Python): a pty slave whose master it closed (hung up).
* ``memfds`` (Python): memfds whose size is not page-aligned: one sealed, one mapped shared and
  written through the mapping, one created without sealing.
* ``clocks`` (Python): reads the monotonic and boot clocks every tick (a tree criu restored keeps
  them going on in a time namespace of its own).
* ``shmopen`` (Python): POSIX shared memory segments (shm_open: O_NOFOLLOW fds in /dev/shm), one
  named and shared with a child, one unlinked and held by its fd and mapping alone.
* ``sigio`` (Python): signal-driven I/O: O_ASYNC fds owned by the process (a pipe with F_SETSIG, a
  regular file) and by its process group (a unix socket), signalled every tick.
* ``tmpfiles`` (Python): an O_TMPFILE file (no name, written on every tick).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import harness
import pytest

HERE = Path(__file__).resolve().parent

_SPECS = (
    harness.WorkloadSpec("evfds", str(HERE / "evfds.c"), constants=("token", "eps", "tint"),
                         monotonic=("expirations", "sigs")),
    harness.WorkloadSpec("tcppair", str(HERE / "tcppair.py"), roles=("server", "client"),
                         constants=("token", "conn"), steps=("seq",)),
    harness.WorkloadSpec("ttyjob", str(HERE / "ttyjob.py"), constants=("token", "tty"), monotonic=("echo",)),
    harness.WorkloadSpec("inherit", str(HERE / "inherit.py"), constants=("token",), steps=("seq",)),
    harness.WorkloadSpec("tcpclose", str(HERE / "tcpclose.py"), constants=("token",), steps=("seq",)),
    harness.WorkloadSpec("shmghost", str(HERE / "shmghost.py"), roles=("parent", "child"),
                         constants=("token", "priv", "cwd"), steps=("seq",)),
    harness.WorkloadSpec("unixnames", str(HERE / "unixnames.py"), steps=("seq",), monotonic=("dgrams",)),
    harness.WorkloadSpec("inotify", str(HERE / "inotify.py"), constants=("token", "wds"), steps=("seq",),
                         monotonic=("created", "modified")),
    harness.WorkloadSpec("pidfds", str(HERE / "pidfds.py"), roles=("main", "child"),
                         constants=("token", "child", "selfnb", "dead"), steps=("seq",)),
    harness.WorkloadSpec("inetidle", str(HERE / "inetidle.py"), constants=("token", "nodelay", "bport", "types"),
                         steps=("seq",)),
    harness.WorkloadSpec("netlinks", str(HERE / "netlinks.py"), constants=("token", "addr", "member", "generic", "lo"),
                         steps=("seq",)),
    harness.WorkloadSpec("rawicmp", str(HERE / "rawicmp.py"), constants=("token", "filter", "pong"), steps=("seq",)),
    harness.WorkloadSpec("rawicmp6", str(HERE / "rawicmp6.py"), constants=("token", "filter", "pong"), steps=("seq",)),
    harness.WorkloadSpec("packets", str(HERE / "packets.py"), constants=("token", "aux", "seen"), steps=("seq",)),
    # (qin/qout are no constants: data written back into a pty after a -R dump reaches the other
    # end through the tty layer's worker, a moment after the tree runs on; the tests wait for them)
    harness.WorkloadSpec("ptypair", str(HERE / "ptypair.py"), roles=("main", "child", "member"),
                         constants=("token", "child", "pty", "pkt", "ctty", "fg", "echo", "size"),
                         steps=("seq",), monotonic=("pongs",)),
    harness.WorkloadSpec("ptyhung", str(HERE / "ptyhung.py"), constants=("token", "hung", "pts"), steps=("seq",)),
    harness.WorkloadSpec("memfds", str(HERE / "memfds.py"), constants=("token", "sealed", "seals", "sizes"),
                         steps=("seq", "stored")),
    harness.WorkloadSpec("clocks", str(HERE / "clocks.py"), steps=("seq",), monotonic=("mono", "boot")),
    # (echo is read from the named segment, a live file neither tool restores: after a second restore
    # of one dump it starts from what the first restored run left there; the tests check it grows)
    harness.WorkloadSpec("shmopen", str(HERE / "shmopen.py"), roles=("main", "child"),
                         constants=("token", "seg", "gone"), steps=("seq",)),
    harness.WorkloadSpec("sigio", str(HERE / "sigio.py"), constants=("token", "owners", "async_"), steps=("seq",),
                         monotonic=("rt", "io")),
    harness.WorkloadSpec("dgramlog", str(HERE / "dgramlog.py"), roles=("main", "child"), constants=("token",),
                         steps=("seq",), monotonic=("sent", "got")),
    harness.WorkloadSpec("tmpfiles", str(HERE / "tmpfiles.py"), constants=("token", "head", "links"),
                         steps=("seq", "pos")),
)
for _s in _SPECS:
    harness.SPECS.setdefault(_s.name, _s)


def dump_fixtures(*names: str):
    """Two module fixtures for a test file: `criu_dump` and `spice_dump`, each a fresh instance of
    the workload dumped (and so killed) by real criu / by spice; with several workload names, both
    are parametrized over them. Assign both in the module."""

    @pytest.fixture(scope="module", params=names)
    def criu_dump(request, criu_bin: Path, compat_tmp: Path) -> harness.DumpInfo:
        wl = harness.start_workload(request.param, compat_tmp / request.param / "criu")
        return harness.dump_workload(wl, wl.rundir / "images")

    @pytest.fixture(scope="module", params=names)
    def spice_dump(request, criu_bin: Path, compat_tmp: Path) -> harness.DumpInfo:
        from spice import spice_dumper

        wl = harness.start_workload(request.param, compat_tmp / request.param / "spice")
        return harness.dump_workload(wl, wl.rundir / "images", dumper=spice_dumper)

    return criu_dump, spice_dump


def restore_and_check(info: harness.DumpInfo, tool: str, check, times: int = 1) -> None:
    """Restore info's images with `tool` ("criu" or "spice") `times` times; each time check(info,
    pid) the restored tree, then kill it."""
    from spice import spice_restore

    for _ in range(times):
        pid = harness.criu_restore(info.images_dir) if tool == "criu" else spice_restore(info.images_dir)
        check(info, pid)
        harness.kill_restored(info, pid)


def assert_dump_refused(pid: int, images: Path, ending: str) -> None:
    """`spice dump -t pid` fails as the brief wants: exit 1 and one `Error (spice/dump): ...` line,
    ending with `ending`."""
    from spice import assert_one_error, spice

    err = assert_one_error(spice("dump", "-t", str(pid), "-D", str(images), "-o", "dump.log", check=False), "dump")
    assert err.endswith(ending), err


def crit_files(crit: Path, images: Path, type_name: str, field: str) -> list[dict]:
    """What real crit shows of the files.img entries of one type (their `field` message), without
    the file ids (each tool numbers them in its own walk), in inode order. spice's own crit must
    show the whole image exactly as real crit does."""
    from spice import spice

    out = subprocess.run([str(crit), "show", str(images / "files.img")], capture_output=True, text=True,
                         check=True)
    assert json.loads(spice("crit", "show", str(images / "files.img")).stdout) == json.loads(out.stdout)
    entries = [e[field] for e in json.loads(out.stdout)["entries"] if e["type"] == type_name]
    for e in entries:
        del e["id"]
    return sorted(entries, key=lambda e: e.get("ino", 0))


@contextlib.contextmanager
def dumped_by_both(name: str, rundir: Path) -> Iterator[tuple[harness.Workload, Path, Path]]:
    """A fresh workload dumped by real criu and by spice, both --leave-running: (the workload, criu's
    images, spice's images). The workload is checked to run on, and killed at the end."""
    from spice import spice_dumper

    wl = harness.start_workload(name, rundir)
    try:
        theirs, ours = wl.rundir / "criu-images", wl.rundir / "spice-images"
        harness.criu_dump(wl.pid, theirs, leave_running=True)
        spice_dumper(wl.pid, ours, leave_running=True)
        yield wl, theirs, ours
        harness.assert_continues(wl, wl.pids, new_ticks=2)
    finally:
        wl.kill()


def wait_for(cond, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + harness.scaled(timeout)
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def last_field_text(info_or_wl, key: str, role: str = "main") -> str:
    """The value of key in the latest line of role in the workload's output."""
    lines, _ = harness.read_lines(info_or_wl.out_file)
    for ln in reversed(lines):
        if ln.role == role and not ln.failed and key in ln.fields:
            return ln.fields[key]
    raise AssertionError(f"no {key}= line from {role}")


def last_field(info_or_wl, key: str, role: str = "main") -> int:
    return int(last_field_text(info_or_wl, key, role))


def signal_and_wait(pid: int, out_file: Path, key: str = "sigs", timeout: float = 10.0) -> int:
    """Send SIGUSR1 to pid and wait until its lines count one more signal; returns the new count."""
    before = _latest(out_file, key)
    os.kill(pid, signal.SIGUSR1)
    wait_for(lambda: _latest(out_file, key) > before, timeout, f"{key} to grow past {before}")
    return _latest(out_file, key)


def _latest(out_file: Path, key: str) -> int:
    lines, _ = harness.read_lines(out_file)
    vals = [int(ln.fields[key]) for ln in lines if not ln.failed and key in ln.fields]
    return vals[-1] if vals else -1


def kill_quietly(pids) -> None:
    with contextlib.suppress(Exception):
        harness.kill_pids([p for p in pids if harness.is_running(p)])


class JobShell:
    """A job-control shell (jobshell.py) on a fresh pty whose master the test holds: it runs the
    workload, `criu dump --shell-job` and `spice restore --shell-job` in its session, each in the
    terminal's foreground, as a user at a terminal would."""

    def __init__(self, workdir: Path) -> None:
        import subprocess
        import sys

        self.master, slave = os.openpty()
        self.slave_path = os.ttyname(slave)
        r, self.cmd = os.pipe()
        workdir.mkdir(parents=True, exist_ok=True)
        self.results = workdir / "jobshell.out"
        self._seen = 0
        with open(self.results, "wb") as res, open(workdir / "jobshell.err", "ab") as err:
            self.proc = subprocess.Popen([sys.executable, "-B", str(HERE / "jobshell.py"), self.slave_path, str(r)],
                                         stdin=subprocess.DEVNULL, stdout=res, stderr=err, pass_fds=(r,))
        os.close(r)
        os.close(slave)
        os.set_blocking(self.master, False)
        self.screen = b""

    def _ask(self, req: dict, timeout: float = 120.0) -> dict:
        import json

        os.write(self.cmd, (json.dumps(req) + "\n").encode())
        deadline = time.monotonic() + harness.scaled(timeout)
        while True:
            self.drain()
            lines = self.results.read_bytes().splitlines()
            if len(lines) > self._seen:
                self._seen += 1
                return json.loads(lines[self._seen - 1])
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"jobshell did not answer {req} (exit {self.proc.poll()}); "
                                     f"terminal: {self.screen[-2000:]!r}")
            time.sleep(0.01)

    def run(self, argv: list[str], cwd: Path | str = "/", bg: bool = False) -> int:
        """Run argv to completion (in the terminal's foreground, or in the background with bg)."""
        return self._ask({"run": [str(a) for a in argv], "cwd": str(cwd), "bg": bg})["rc"]

    def spawn(self, argv: list[str], cwd: Path | str = "/") -> int:
        return self._ask({"spawn": [str(a) for a in argv], "cwd": str(cwd)})["pid"]

    def reap(self) -> list[int]:
        return self._ask({"reap": True})["reaped"]

    def drain(self) -> bytes:
        """Everything written to the terminal so far (kept in self.screen)."""
        while True:
            try:
                chunk = os.read(self.master, 65536)
            except (BlockingIOError, OSError):
                break
            if not chunk:
                break
            self.screen += chunk
        return self.screen

    def type(self, text: str) -> None:
        os.write(self.master, text.encode())

    def kill_job(self, pid: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        wait_for(lambda: pid in self.reap() or harness.process_state(pid) is None, 10, f"job {pid} reaped")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.cmd)
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        self.proc.wait()
        os.close(self.master)


def dump_info(name: str, pids: tuple[int, ...], rundir: Path, out_file: Path, images_dir: Path,
              before: dict[str, harness.Line] | None = None) -> harness.DumpInfo:
    """The DumpInfo of a killing dump of a workload not started by harness.start_workload."""
    lines, end = harness.read_lines(out_file)
    if any(ln.failed for ln in lines):
        raise AssertionError(f"{name} failed before the dump: {[ln.text for ln in lines if ln.failed][0]}")
    last = harness.last_by_role(lines)
    roles = {r: ln.pid for r, ln in last.items() if ln.pid}
    ticks = {r: ln.tick or 0 for r, ln in last.items()}
    return harness.DumpInfo(name=name, images_dir=images_dir, rundir=rundir, out_file=out_file,
                            log_file=rundir / f"{name}.log", pids=pids, roles=roles, last_ticks=ticks,
                            last_ticks_max=ticks, pre_dump=last, leave_running=False, port=None, dump=None,
                            resume_offset=end)


def shell_job_dump(dump_cmd: list, base: Path) -> tuple[JobShell, harness.DumpInfo]:
    """Start ttyjob as the foreground job of a fresh JobShell, answer one ping, then run
    `<dump_cmd> dump --shell-job -t PID -D base/images` from that shell (in the background, as from
    a second terminal; the job notices if it loses the terminal). Returns the shell and the DumpInfo."""
    import sys

    rundir = base / "run"
    rundir.mkdir(parents=True)
    sh = JobShell(base)
    out = rundir / "ttyjob.out"
    pid = sh.spawn([sys.executable, "-B", HERE / "ttyjob.py", out], cwd=rundir)
    wait_for(lambda: len(harness.read_lines(out)[0]) >= 3, 15, "3 ticks of the job")
    sh.type("ping 1\n")
    wait_for(lambda: b"pong 1 " in sh.drain(), 5, "the job's answer on the terminal")
    images = base / "images"
    images.mkdir()
    rc = sh.run([*dump_cmd, "dump", "--shell-job", "-t", pid, "-D", images, "-v4", "-o", "dump.log"],
                cwd=harness.REPO, bg=True)
    assert rc == 0, (images / "dump.log").read_text()[-2000:]
    wait_for(lambda: harness.process_state(pid) is None or pid in sh.reap(), 10, "the dumped job to go")
    return sh, dump_info("ttyjob", (pid,), rundir, out, images)


def check_shell_job_restore(sh: JobShell, info: harness.DumpInfo) -> None:
    """`spice restore --shell-job` typed at the job's shell brings the job back on that terminal."""
    import sys
    import termios

    try:
        attrs = termios.tcgetattr(sh.master)  # turn ECHO back on: the restore must put the job's off again
        attrs[3] |= termios.ECHO
        termios.tcsetattr(sh.master, termios.TCSANOW, attrs)
        pidfile = info.images_dir / "restore.pid"
        # as typed at the shell: `spice restore --shell-job` in the foreground, waiting for the job
        sh.spawn([sys.executable, "-m", "spice_criu", "restore", "--shell-job", "-D", info.images_dir, "-v4",
                  "-o", "restore.log", "--pidfile", pidfile], cwd=harness.REPO)
        wait_for(pidfile.exists, 30, "spice restore's pidfile")
        pid = int(pidfile.read_text())
        assert pid == info.pid
        cont = harness.assert_continues(info, pid, new_ticks=3)  # foreground, ECHO off, same tty: checked per tick
        assert cont.first_tick["main"] == info.last_tick + 1
        sh.type("ping 2\n")
        wait_for(lambda: b"pong 2 " + info.pre_dump["main"].fields["token"].encode() in sh.drain(), 5,
                 "the restored job to answer on the terminal")
        wait_for(lambda: last_field(info, "echo") == 2, 5, "the job to count the second ping")
        assert not termios.tcgetattr(sh.master)[3] & termios.ECHO
        sh.kill_job(pid)
    finally:
        sh.close()


# --- shmghost -----------------------------------------------------------------------------------


def ghost_maps(pid: int) -> dict[str, tuple[str, int, str]]:
    """The process's mappings of deleted shmghost files: name -> (device, inode, perms)."""
    out = {}
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and "shmghost-" in parts[5]:
            assert parts[5].endswith(" (deleted)"), line
            name = os.path.basename(parts[5].removesuffix(" (deleted)")).split("-")[1]
            out[name] = (parts[3], int(parts[4]), parts[1])
    return out


def check_shmghost(info: harness.DumpInfo, pid: int) -> None:
    """Both processes continue, map the one shared file (same inode) and their private one, and no
    recreated ghost is left behind in the directory."""
    assert pid == info.pid
    # STALL is 20 ticks: 25 new ticks prove the two processes still see each other's writes
    harness.assert_continues(info, list(info.pids), new_ticks=25, timeout=30)
    parent, child = (ghost_maps(p) for p in info.pids)
    assert set(parent) == {"shared", "private"} and set(child) == {"shared", "private"}, (parent, child)
    assert parent["shared"][:2] == child["shared"][:2], "the shared mapping is two files"
    assert parent["shared"][2] == "rw-s" and parent["private"][2] == "rw-p"
    assert info.pre_dump["child"].fields["cwd"].endswith("_(deleted)")  # the same on every line: a constant
    assert not [n for n in os.listdir(info.rundir) if "shmghost-" in n]
