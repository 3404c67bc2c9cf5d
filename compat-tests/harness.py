# SPDX-License-Identifier: MIT
"""The real-CRIU test bed: workloads, real ``criu dump``/``criu restore``, and the continuation check.

Everything the compat tests need to prove "the restored process continues exactly where it was",
whatever restored it (real CRIU or spice):

* :data:`WORKLOADS` and :func:`start_workload`: five programs (C: counter, threads, tree; Python:
  pyholder, httpd) that append one ``tick=N role=R pid=P token=T key=value...`` line per ~100 ms
  step to an O_APPEND file, checking their own state on every step (``FAIL ...`` line + exit 1).
* :func:`criu_dump` / :func:`criu_restore`: the real binary by full path, ``-v4 -o <log>``, raising
  :class:`CriuError` with the log tail.
* :func:`dump_workload` -> :class:`DumpInfo`: the dump point (last ticks, checksums, pids) of a dump
  made by any tool, restorable many times.
* :func:`assert_continues`: new ticks appear, continuing from the dump point, same checksums, every
  thread/process advancing, httpd answering; :func:`kill_restored` kills and reaps the restored
  tree and moves the DumpInfo's resume offset so the next restore is checked on its own lines.

The current process is made a child subreaper (:func:`make_subreaper`), so tasks restored with
``-d`` become its children and every killed task is reaped at once (a zombie would hold its PID and
the next restore would fail with ``Can't fork for <pid>: File exists``).

Nothing here depends on the host kernel beyond Linux >= 6.1 (it runs as is in the qemu guest of
the kmod tests: :func:`ensure_criu` loads the modules criu needs and brings lo up there). Knobs:
``SPICE_COMPAT_TMP`` (base temp dir), ``SPICE_KEEP=1`` (keep the session dir),
``SPICE_COMPAT_BUILD`` (C build cache, default ``<repo>/.work/compat-build``), ``CRIU4_BINDIR``
(where install-criu.sh puts criu/crit), ``SPICE_COMPAT_MODULES_ROOT`` (a root holding
lib/modules/<kver> when the running kernel's modules are elsewhere), ``SPICE_COMPAT_TIMEOUT_SCALE``
(multiply every timeout; only matters on failure paths, the qemu TCG guest passes with 1).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import fcntl
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORKLOAD_DIR = HERE / "workloads"
INSTALL_CRIU = HERE / "install-criu.sh"
CRIU4_BINDIR = Path(os.environ.get("CRIU4_BINDIR", "/usr/local/sbin"))
CRIU_BIN = CRIU4_BINDIR / "criu"
CRIT_BIN = CRIU4_BINDIR / "crit"
CRIU_MIN_VERSION = (4, 2)
TIMEOUT_SCALE = float(os.environ.get("SPICE_COMPAT_TIMEOUT_SCALE", "1"))
CFLAGS = ("-O2", "-g", "-Wall", "-Wextra", "-pthread")

WORKLOADS = ["counter", "threads", "tree", "pyholder", "httpd"]


def unit_test_module(name: str):
    """A module of tests/ (its helpers and expectations), imported under a name of its own; tests/ is
    put on sys.path because those modules import each other by name."""
    import importlib.util

    if str(REPO / "tests") not in sys.path:
        sys.path.insert(0, str(REPO / "tests"))
    spec = importlib.util.spec_from_file_location(f"spice_unit_{name}", REPO / "tests" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def scaled(seconds: float) -> float:
    """A timeout stretched by SPICE_COMPAT_TIMEOUT_SCALE (slow guests)."""
    return seconds * TIMEOUT_SCALE


# --------------------------------------------------------------------------------------------------
# workload catalogue


@dataclasses.dataclass(frozen=True)
class WorkloadSpec:
    """What a workload is and which fields of its lines the continuation check compares.

    constants: equal on every line of a run and across the dump (checksums, token).
    steps: ``value - tick`` is constant across the dump (fpos, seq).
    counters: never go back, and must grow after a restore (per-thread counters).
    monotonic: never go back (requests served).
    """

    name: str
    source: str
    roles: tuple[str, ...] = ("main",)
    constants: tuple[str, ...] = ("token",)
    steps: tuple[str, ...] = ()
    counters: tuple[str, ...] = ()
    monotonic: tuple[str, ...] = ()
    needs_port: bool = False

    @property
    def is_c(self) -> bool:
        return self.source.endswith(".c")


SPECS: dict[str, WorkloadSpec] = {
    s.name: s
    for s in (
        WorkloadSpec("counter", "counter.c", constants=("token", "anon", "shm", "fmap"), steps=("fpos",)),
        WorkloadSpec("threads", "threads.c", constants=("token", "mem"), counters=("c1", "c2", "c3", "c4")),
        WorkloadSpec("tree", "tree.c", roles=("parent", "child1", "child2"), constants=("token", "mem"),
                     steps=("seq",)),
        WorkloadSpec("pyholder", "holder.py", constants=("token", "data", "objs")),
        WorkloadSpec("httpd", "httpd.py", constants=("token", "state"), monotonic=("requests",),
                     needs_port=True),
        # not in WORKLOADS: kernel-held state (signals, timers, creds, limits...) for targeted tests
        WorkloadSpec("kstate", "kstate.c", constants=("token", "mem"), counters=("alrm", "tmr", "thr")),
    )
}
assert list(SPECS)[: len(WORKLOADS)] == WORKLOADS


def spec(name: str) -> WorkloadSpec:
    try:
        return SPECS[name]
    except KeyError:
        raise ValueError(f"unknown workload {name!r} (known: {', '.join(WORKLOADS)})") from None


# --------------------------------------------------------------------------------------------------
# processes: subreaper, liveness, kill + reap

_PR_SET_CHILD_SUBREAPER = 36
_subreaper = False
_popens: dict[int, subprocess.Popen[bytes]] = {}  # pid -> Popen we started (workloads, criu)
_restorers: dict[int, subprocess.Popen[bytes]] = {}  # restored root pid -> its criu (not detached)


def make_subreaper() -> None:
    """Make this process a child subreaper (idempotent): orphans of our descendants, e.g. tasks
    restored by ``criu restore -d``, are re-parented to us, so we can waitpid() them."""
    global _subreaper
    if _subreaper:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(err)}")
    _subreaper = True


def _stat_fields(pid: int) -> list[str] | None:
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # comm may hold spaces and parentheses: the fields start after the last ')'
    return data[data.rindex(")") + 2 :].split()


def process_state(pid: int) -> str | None:
    """The /proc state letter of pid (R, S, D, T, Z, ...) or None if there is no such process."""
    fields = _stat_fields(pid)
    return fields[0] if fields else None


def is_running(pid: int) -> bool:
    """pid exists and is not a zombie or dead."""
    return process_state(pid) not in (None, "Z", "X", "x")


def parent_of(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[1]) if fields else None


def _all_pids() -> list[int]:
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def descendants(pid: int) -> list[int]:
    """Every live descendant of pid (children first, breadth-first), found by a /proc scan."""
    children: dict[int, list[int]] = {}
    for p in _all_pids():
        pp = parent_of(p)
        if pp is not None:
            children.setdefault(pp, []).append(p)
    out: list[int] = []
    todo = [pid]
    while todo:
        for c in sorted(children.get(todo.pop(0), [])):
            out.append(c)
            todo.append(c)
    return out


def is_descendant(pid: int, ancestor: int | None = None) -> bool:
    """pid's parent chain reaches ancestor (default: this process)."""
    ancestor = os.getpid() if ancestor is None else ancestor
    seen = 0
    p: int | None = pid
    while p and p > 1 and seen < 64:
        p = parent_of(p)
        if p == ancestor:
            return True
        seen += 1
    return False


def process_cwd(pid: int) -> Path | None:
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None


def _belongs(pid: int, rundir: Path) -> bool:
    """pid is (a restored instance of) a process we run: our descendant, or working in rundir."""
    if is_descendant(pid):
        return True
    cwd = process_cwd(pid)
    return cwd is not None and cwd.is_relative_to(rundir)


def reap(pids: Iterable[int], timeout: float = 10.0) -> None:
    """Wait until every pid is gone: waitpid() it if it is our child (or once it becomes ours by
    re-parenting), otherwise wait for its own parent to reap it. Raises TimeoutError."""
    pending = set(pids)
    deadline = time.monotonic() + scaled(timeout)
    while pending:
        for pid in sorted(pending):
            if _reaped(pid):
                pending.discard(pid)
        if not pending:
            break
        if time.monotonic() > deadline:
            states = {p: process_state(p) for p in sorted(pending)}
            raise TimeoutError(f"processes not gone after {scaled(timeout):.0f} s: {states}")
        time.sleep(0.003)
    reap_finished_popens()


def _reaped(pid: int) -> bool:
    popen = _popens.get(pid)
    if popen is not None:
        if popen.poll() is None:
            return False
        del _popens[pid]
        return True
    try:
        got, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return process_state(pid) is None  # not ours: gone, or a zombie its parent must reap
    return got == pid


def reap_finished_popens() -> None:
    """Collect criu/workload processes we started that have exited in the meantime."""
    for pid, popen in list(_popens.items()):
        if popen.poll() is not None:
            del _popens[pid]


def reap_zombie_children() -> list[int]:
    """waitpid() every zombie child we did not start through subprocess (re-parented orphans)."""
    me = str(os.getpid())
    reaped = []
    for pid in _all_pids():
        fields = _stat_fields(pid)
        if fields and fields[0] == "Z" and fields[1] == me and pid not in _popens:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
                reaped.append(pid)
    return reaped


def kill_pids(pids: Sequence[int], timeout: float = 10.0) -> None:
    """SIGKILL pids (in order: put the root first) and their live descendants, then reap them all."""
    targets: list[int] = []
    for pid in pids:
        if pid not in targets:
            targets.append(pid)
        for d in descendants(pid):
            if d not in targets:
                targets.append(d)
    for pid in targets:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    reap(targets, timeout)
    for pid in targets:  # a criu restore that stayed in the foreground exits with its tree
        restorer = _restorers.pop(pid, None)
        if restorer is not None:
            try:
                restorer.wait(timeout=scaled(timeout))
            except subprocess.TimeoutExpired:
                restorer.kill()
                restorer.wait()
            _popens.pop(restorer.pid, None)


# --------------------------------------------------------------------------------------------------
# real CRIU


class CriuError(RuntimeError):
    """A criu command failed; the message carries the command, its output and the log tail."""


@dataclasses.dataclass
class CriuResult:
    """One criu run: command line, exit status, wall time (s), log file and its stdout/stderr."""

    args: list[str]
    returncode: int
    wall: float
    log: Path
    output: str


_criu_checked: Path | None = None


def criu_version(criu: Path = CRIU_BIN) -> tuple[int, ...] | None:
    """The version criu reports (e.g. (4, 2, 1)), or None if it does not run."""
    try:
        out = subprocess.run([str(criu), "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"^Version:\s*([0-9][0-9.]*)", out, re.M)
    return tuple(int(x) for x in m.group(1).split(".") if x) if m else None


# what criu needs from a modular kernel: nfnetlink (its kerndat probe exits without it), nf_tables,
# and the sock_diag modules it collects sockets with
CRIU_MODULES = ("nfnetlink", "nf_tables", "inet_diag", "tcp_diag", "udp_diag", "unix_diag",
                "netlink_diag", "packet_diag")


def _module_roots() -> list[Path]:
    kver = os.uname().release
    roots = [Path(os.environ["SPICE_COMPAT_MODULES_ROOT"])] if os.environ.get("SPICE_COMPAT_MODULES_ROOT") else []
    roots.append(Path("/"))
    # the qemu guest sees the host's extracted copy of its kernel package (kmod-ci cache)
    roots.append(Path(os.environ.get("KMOD_CI_CACHE", "/var/cache/kmod-ci")) / kver / "root")
    return [r for r in roots if (r / "lib/modules" / kver / "modules.dep").exists()]


def load_criu_modules() -> list[str]:
    """Load the kernel modules criu needs if the kernel is modular and they are not loaded (a
    minimal guest cannot autoload them: its modprobe helper runs in the initramfs). Modules come
    from /lib/modules, $SPICE_COMPAT_MODULES_ROOT or the kmod-ci cache. Returns what is still missing."""
    if not Path("/proc/modules").exists():
        return []  # monolithic kernel: everything it has is built in
    def missing() -> list[str]:
        return [m for m in CRIU_MODULES if not Path("/sys/module", m).exists()]
    todo = missing()
    modprobe = shutil.which("modprobe") or "/sbin/modprobe"
    for root in _module_roots():
        if not todo:
            break
        for mod in todo:  # one at a time: a module this kernel lacks must not stop the others
            subprocess.run([modprobe, "-q", "-d", str(root), mod], stdin=subprocess.DEVNULL,
                           capture_output=True)
        todo = missing()
    return todo


def ensure_loopback_up() -> None:
    """Bring lo up if it is down (a bare guest): httpd listens on 127.0.0.1."""
    try:
        flags = int(Path("/sys/class/net/lo/flags").read_text(), 16)
    except (OSError, ValueError):
        return
    if flags & 1:  # IFF_UP
        return
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        fcntl.ioctl(s.fileno(), 0x8914, struct.pack("16sH22x", b"lo", flags | 1))  # SIOCSIFFLAGS


def ensure_criu() -> Path:
    """Real CRIU >= 4.2 at CRIU4_BINDIR/criu: loads the kernel modules it needs (if modular) and
    brings lo up, then runs install-criu.sh (idempotent, ~0.02 s when installed; it also refreshes
    the kdat cache after a reboot). Raises RuntimeError if criu is still absent."""
    global _criu_checked
    if _criu_checked is not None:
        return _criu_checked
    load_criu_modules()
    ensure_loopback_up()
    proc = subprocess.run(["bash", str(INSTALL_CRIU)], stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=scaled(1200))
    version = criu_version(CRIU_BIN)
    if version is None or version < CRIU_MIN_VERSION or not CRIT_BIN.exists():
        raise RuntimeError(
            f"real CRIU >= {'.'.join(map(str, CRIU_MIN_VERSION))} is not available at {CRIU_BIN} "
            f"(version {version}, crit present: {CRIT_BIN.exists()}); {INSTALL_CRIU} exited "
            f"{proc.returncode}:\n{proc.stdout}{proc.stderr}"
        )
    _criu_checked = CRIU_BIN
    return CRIU_BIN


def log_tail(log: Path, lines: int = 25) -> str:
    """The Error lines and the last lines of a criu log, for failure messages."""
    try:
        text = log.read_text(errors="replace").splitlines()
    except OSError as e:
        return f"(no log {log}: {e.strerror})"
    errors = [ln for ln in text if "Error" in ln][:10]
    parts = []
    if errors:
        parts.append("errors:\n" + "\n".join(errors))
    parts.append(f"last {min(lines, len(text))} lines of {log}:\n" + "\n".join(text[-lines:]))
    return "\n".join(parts)


def _next_log(images_dir: Path, action: str) -> str:
    n = 1
    while (images_dir / f"{action}-{n}.log").exists():
        n += 1
    return f"{action}-{n}.log"


def run_criu(args: Sequence[str], images_dir: Path, log_name: str, criu: Path | None = None,
             timeout: float = 120.0) -> CriuResult:
    """Run ``criu <args> -D images_dir -v4 -o log_name``; raise CriuError unless it exits 0."""
    criu = criu or ensure_criu()
    cmd = [str(criu), *args, "-D", str(images_dir), "-v4", "-o", log_name]
    with tempfile.TemporaryFile() as out:  # a file, not a pipe: restored tasks never hold it open
        t0 = time.perf_counter()
        try:
            rc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                timeout=scaled(timeout)).returncode
        except subprocess.TimeoutExpired as e:
            raise CriuError(f"{' '.join(cmd)} timed out\n{log_tail(images_dir / log_name)}") from e
        wall = time.perf_counter() - t0
        out.seek(0)
        output = out.read().decode(errors="replace")
    result = CriuResult(cmd, rc, wall, images_dir / log_name, output)
    if rc != 0:
        raise CriuError(f"{' '.join(cmd)} exited {rc}\n{output}{log_tail(result.log)}")
    return result


def criu_dump(pid: int, images_dir: Path, leave_running: bool = False, extra_args: Sequence[str] = (),
              log_name: str = "dump.log", criu: Path | None = None) -> CriuResult:
    """Real ``criu dump -t pid`` into images_dir (created). Without leave_running the tree is killed
    by criu (reap it: :func:`dump_workload` does)."""
    images_dir = Path(images_dir)
    images_dir.mkdir(parents=True, exist_ok=True)
    args = ["dump", "-t", str(pid), *(["--leave-running"] if leave_running else []), *extra_args]
    return run_criu(args, images_dir, log_name, criu)


def criu_restore(images_dir: Path, detached: bool = True, pidfile: Path | None = None,
                 extra_args: Sequence[str] = (), log_name: str | None = None,
                 criu: Path | None = None) -> int:
    """Real ``criu restore`` of images_dir; returns the restored root pid (read from the pidfile).

    detached: ``-d``; criu exits once the tree runs and the root becomes our child (subreaper).
    Otherwise criu stays as the root's parent in the background and is reaped with it.
    Logs go to restore-<n>.log in images_dir (a new n each time) unless log_name is given.
    """
    make_subreaper()
    images_dir = Path(images_dir)
    log_name = log_name or _next_log(images_dir, "restore")
    pidfile = Path(pidfile) if pidfile else images_dir.parent / (Path(log_name).stem + ".pid")
    pidfile = pidfile.absolute()
    pidfile.unlink(missing_ok=True)  # criu creates it with O_EXCL
    args = ["restore", "--pidfile", str(pidfile), *extra_args]
    if detached:
        run_criu([*args, "-d"], images_dir, log_name, criu)
        return _read_pidfile(pidfile)
    criu = criu or ensure_criu()
    cmd = [str(criu), *args, "-D", str(images_dir), "-v4", "-o", log_name]
    with open(images_dir.parent / (Path(log_name).stem + ".stdout"), "ab") as out:
        popen = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    _popens[popen.pid] = popen
    deadline = time.monotonic() + scaled(60)
    while not (pidfile.exists() and pidfile.read_text().strip()):
        if popen.poll() is not None:
            raise CriuError(f"{' '.join(cmd)} exited {popen.returncode} before restoring\n"
                            f"{log_tail(images_dir / log_name)}")
        if time.monotonic() > deadline:
            raise CriuError(f"{' '.join(cmd)}: no pidfile after 60 s\n{log_tail(images_dir / log_name)}")
        time.sleep(0.005)
    pid = _read_pidfile(pidfile)
    _restorers[pid] = popen
    return pid


def _read_pidfile(pidfile: Path) -> int:
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError) as e:
        raise CriuError(f"restore left no usable pidfile {pidfile}: {e}") from e


# --------------------------------------------------------------------------------------------------
# building and starting workloads


def build_dir() -> Path:
    return Path(os.environ.get("SPICE_COMPAT_BUILD", REPO / ".work" / "compat-build"))


def build_workload(name: str) -> Path:
    """The compiled C workload (gcc; rebuilt only when a source, the flags or gcc changed)."""
    sp = spec(name)
    if not sp.is_c:
        raise ValueError(f"{name} is not a C workload")
    out_dir = build_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    binary = out_dir / name
    sources = [WORKLOAD_DIR / sp.source, WORKLOAD_DIR / "common.h"]
    gcc = shutil.which("gcc")
    if gcc is None:
        raise RuntimeError("gcc not found: the C workloads are built at test time "
                           "(make compat-setup, or apt-get install gcc libc6-dev)")
    cmd = [gcc, *CFLAGS, "-o", str(binary) + ".tmp", str(sources[0])]
    stamp = out_dir / f"{name}.cmd"
    with open(out_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        fresh = (
            binary.exists()
            and stamp.exists()
            and stamp.read_text() == " ".join(cmd)
            and all(binary.stat().st_mtime >= s.stat().st_mtime for s in sources)
        )
        if not fresh:
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"building {name} failed: {' '.join(cmd)}\n{proc.stdout}{proc.stderr}")
            os.replace(str(binary) + ".tmp", binary)
            stamp.write_text(" ".join(cmd))
    return binary


def free_port() -> int:
    """A free TCP port on 127.0.0.1, below the ephemeral range if possible: the port must stay
    free between a dump and each restore, and outgoing connections take their ports from there."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    rnd = random.Random()
    candidates = [rnd.randrange(10000, low) for _ in range(50)] if low > 11000 else []
    for port in [*candidates, 0]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise OSError("no free TCP port on 127.0.0.1")


@dataclasses.dataclass(frozen=True)
class Line:
    """One parsed output line. tick is None for FAIL and garbled lines (see ``failed``)."""

    offset: int
    text: str
    tick: int | None
    role: str
    pid: int | None
    fields: dict[str, str]

    @property
    def failed(self) -> bool:
        return self.tick is None


def parse_line(offset: int, text: str) -> Line:
    fields = dict(tok.split("=", 1) for tok in text.split() if "=" in tok)
    pid = int(fields["pid"]) if fields.get("pid", "").isdigit() else None
    tick = fields.get("tick", "")
    if text.startswith("FAIL") or not tick.isdigit() or "role" not in fields:
        return Line(offset, text, None, fields.get("role", "?"), pid, fields)
    return Line(offset, text, int(tick), fields["role"], pid, fields)


def read_lines(path: Path, start: int = 0) -> tuple[list[Line], int]:
    """The complete lines of an output file from byte offset start, and the offset after them."""
    try:
        with open(path, "rb") as f:
            f.seek(start)
            data = f.read()
    except FileNotFoundError:
        return [], start
    end = data.rfind(b"\n") + 1
    lines, pos = [], 0
    for raw in data[:end].split(b"\n")[:-1]:
        lines.append(parse_line(start + pos, raw.decode(errors="replace")))
        pos += len(raw) + 1
    return lines, start + end


def last_by_role(lines: Iterable[Line]) -> dict[str, Line]:
    out: dict[str, Line] = {}
    for ln in lines:
        if not ln.failed:
            out[ln.role] = ln
    return out


def tail_text(path: Path, nbytes: int = 1500) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - nbytes))
            return f.read().decode(errors="replace")
    except OSError as e:
        return f"({path}: {e.strerror})"


class WorkloadError(RuntimeError):
    """A workload did not start, reported FAIL, or stopped."""


@dataclasses.dataclass
class Workload:
    """A running workload started by :func:`start_workload` (cwd = rundir, its own session)."""

    name: str
    rundir: Path
    out_file: Path
    log_file: Path
    port: int | None
    proc: subprocess.Popen[bytes]
    start_offset: int = 0  # where this run's lines start in out_file

    @property
    def spec(self) -> WorkloadSpec:
        return SPECS[self.name]

    @property
    def pid(self) -> int:
        """The root process."""
        return self.proc.pid

    def lines(self, start: int | None = None) -> list[Line]:
        """Parsed lines of this run (from start_offset, or from byte offset start)."""
        return read_lines(self.out_file, self.start_offset if start is None else start)[0]

    def ticks(self, role: str | None = None) -> list[Line]:
        """Parsed tick lines (of one role, default the root role)."""
        role = role or self.spec.roles[0]
        return [ln for ln in self.lines() if ln.role == role and not ln.failed]

    def last_ticks(self) -> dict[str, Line]:
        """The last line written by each role so far."""
        return last_by_role(self.lines())

    def role_pids(self) -> dict[str, int]:
        """role -> pid, from the lines (children announce themselves)."""
        return {role: ln.pid for role, ln in self.last_ticks().items() if ln.pid}

    @property
    def pids(self) -> list[int]:
        """Every process of the workload, root first, then the other roles in spec order."""
        rp = self.role_pids()
        out = [self.pid]
        out += [rp[r] for r in self.spec.roles[1:] if r in rp and rp[r] != self.pid]
        return out

    def check(self) -> None:
        """Raise WorkloadError if a FAIL line was written or the root exited."""
        bad = [ln for ln in self.lines() if ln.failed]
        if bad:
            raise WorkloadError(f"{self.name}: {bad[0].text}\n{tail_text(self.log_file)}")
        if self.proc.poll() is not None or not is_running(self.pid):
            raise WorkloadError(f"{self.name} (pid {self.pid}) exited with {self.proc.returncode}\n"
                                f"out:\n{tail_text(self.out_file)}\nlog:\n{tail_text(self.log_file)}")

    def wait_ticks(self, n: int = 3, timeout: float = 20.0, since: int | None = None) -> None:
        """Wait until every role has written n more lines than now (or than at offset since)."""
        if since is None:
            since = read_lines(self.out_file, self.start_offset)[1]
        deadline = time.monotonic() + scaled(timeout)
        while True:
            self.check()
            fresh = read_lines(self.out_file, since)[0]
            if all(sum(1 for ln in fresh if ln.role == r and not ln.failed) >= n for r in self.spec.roles):
                return
            if time.monotonic() > deadline:
                raise WorkloadError(f"{self.name}: fewer than {n} new ticks from every role "
                                    f"{list(self.spec.roles)} in {scaled(timeout):.0f} s\n"
                                    f"{tail_text(self.out_file)}")
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL and reap every process of the workload still running (also a restored instance
        of it: same pids, run from rundir or our descendant), and the original's exit status."""
        targets = [p for p in self.pids if is_running(p) and _belongs(p, self.rundir)]
        if self.proc.poll() is None and self.pid not in targets:
            targets.insert(0, self.pid)
        if targets:
            kill_pids(targets)
        reap_finished_popens()


def start_workload(name: str, rundir: Path, *, port: int | None = None, out_file: Path | None = None,
                   min_ticks: int = 3, wait: bool = True) -> Workload:
    """Start a workload the way CRIU needs it: cwd rundir, stdin /dev/null, stdout+stderr to
    <name>.log, a new session, no inherited fds. Waits until every role wrote min_ticks lines."""
    make_subreaper()
    sp = spec(name)
    rundir = Path(rundir)
    rundir.mkdir(parents=True, exist_ok=True)
    rundir = rundir.resolve()
    out_file = Path(out_file) if out_file else rundir / f"{name}.out"
    log_file = rundir / f"{name}.log"
    if sp.is_c:
        argv = [str(build_workload(name)), str(out_file)]
    else:
        argv = [sys.executable, "-B", "-E", "-s", str(WORKLOAD_DIR / sp.source), str(out_file)]
    if sp.needs_port:
        port = port or free_port()
        argv.append(str(port))
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "HOME": str(rundir)}
    start_offset = out_file.stat().st_size if out_file.exists() else 0
    with open(log_file, "ab") as log:
        proc = subprocess.Popen(argv, cwd=rundir, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True, env=env)
    _popens[proc.pid] = proc
    wl = Workload(name, rundir, out_file, log_file, port if sp.needs_port else None, proc, start_offset)
    if wait:
        try:
            wl.wait_ticks(min_ticks, since=start_offset)
        except BaseException:
            wl.kill()
            raise
    return wl


# --------------------------------------------------------------------------------------------------
# dump points


@dataclasses.dataclass
class DumpInfo:
    """A dump of a workload and everything needed to check a restore of it, any number of times.

    pids/roles: the original processes (root first); CRIU restores the same pids.
    last_ticks: per role, the last tick written before the freeze (exact for a killing dump; for
    --leave-running a lower bound, last_ticks_max the upper bound: the original ran on a little).
    pre_dump: per role, the line at last_ticks (its constants are what a restore must show).
    resume_offset: out_file offset from which the lines of the next restored run are read; moved to
    the end of the file by :func:`kill_restored` (and :meth:`mark`).
    """

    name: str
    images_dir: Path
    rundir: Path
    out_file: Path
    log_file: Path
    pids: tuple[int, ...]
    roles: dict[str, int]
    last_ticks: dict[str, int]
    last_ticks_max: dict[str, int]
    pre_dump: dict[str, Line]
    leave_running: bool
    port: int | None
    dump: object | None
    resume_offset: int

    @property
    def spec(self) -> WorkloadSpec:
        return SPECS[self.name]

    @property
    def pid(self) -> int:
        return self.pids[0]

    @property
    def last_tick(self) -> int:
        """The root role's last pre-dump tick."""
        return self.last_ticks[self.spec.roles[0]]

    @property
    def out_files(self) -> tuple[Path, ...]:
        return (self.out_file,)

    def mark(self) -> int:
        """Start reading restored lines from the current end of the output file."""
        self.resume_offset = self.out_file.stat().st_size if self.out_file.exists() else 0
        return self.resume_offset


_dump_infos: list[DumpInfo] = []


def dump_workload(wl: Workload, images_dir: Path, *, leave_running: bool = False,
                  dumper: Callable[[int, Path, bool], object] | None = None,
                  extra_args: Sequence[str] = ()) -> DumpInfo:
    """Dump a running workload and record the dump point; the original is gone afterwards.

    dumper(pid, images_dir, leave_running) does the dump (default: real criu with extra_args); it
    may be spice. A killing dump must leave no process behind; with leave_running the workload must
    still be running after it (checked), and is then killed and reaped here.
    """
    wl.check()
    before = wl.last_ticks()
    pids = tuple(wl.pids)
    roles = wl.role_pids()
    if dumper is None:
        result: object = criu_dump(wl.pid, images_dir, leave_running, extra_args)
    else:
        result = dumper(wl.pid, Path(images_dir), leave_running)
    if leave_running:
        gone = [p for p in pids if not is_running(p)]
        if gone:
            wl.kill()
            raise WorkloadError(f"{wl.name}: pids {gone} are gone after a --leave-running dump")
        wl.kill()
    else:
        try:
            reap(pids, timeout=10)
        except TimeoutError as e:
            wl.kill()
            raise WorkloadError(f"{wl.name}: the dump did not kill the tree ({e})") from e
    lines, end = read_lines(wl.out_file, wl.start_offset)
    bad = [ln for ln in lines if ln.failed]
    if bad:
        raise WorkloadError(f"{wl.name} failed before or while being dumped: {bad[0].text}")
    after = last_by_role(lines)
    lo_lines = before if leave_running else after
    for role in wl.spec.roles:
        if role not in lo_lines or role not in after:
            raise WorkloadError(f"{wl.name}: role {role} wrote nothing before the dump")
    info = DumpInfo(
        name=wl.name,
        images_dir=Path(images_dir),
        rundir=wl.rundir,
        out_file=wl.out_file,
        log_file=wl.log_file,
        pids=pids,
        roles=roles,
        last_ticks={r: lo_lines[r].tick or 0 for r in wl.spec.roles},
        last_ticks_max={r: after[r].tick or 0 for r in wl.spec.roles},
        pre_dump={r: lo_lines[r] for r in wl.spec.roles},
        leave_running=leave_running,
        port=wl.port,
        dump=result,
        resume_offset=end,
    )
    _dump_infos.append(info)
    return info


# --------------------------------------------------------------------------------------------------
# the continuation check


@dataclasses.dataclass
class Continuation:
    """What assert_continues saw: per role the pid, the first tick after the restore, the last
    tick seen, and the number of lines of the restored run; http is the last GET body (httpd)."""

    name: str
    pids: dict[str, int]
    first_tick: dict[str, int]
    last_tick: dict[str, int]
    lines: int
    http: dict[str, str] | None = None


def _fail(name: str, what: str, out_file: Path) -> AssertionError:
    return AssertionError(f"{name}: the restored process did not continue: {what}\n"
                          f"--- tail of {out_file} ---\n{tail_text(out_file)}")


def _last_run(lines: list[Line]) -> list[Line]:
    """The lines of the latest run: after the last point where the tick did not go up."""
    start = 0
    for i in range(1, len(lines)):
        if (lines[i].tick or 0) <= (lines[i - 1].tick or 0):
            start = i
    return lines[start:]


def check_continuation(target: DumpInfo | Workload, lines: list[Line],
                       pids: Sequence[int] | None = None, same_pids: bool = True) -> Continuation:
    """Check the lines of a restored run (lines from the DumpInfo's resume offset on) against the
    dump point. Pure: no waiting, no liveness. For a Workload (no dump) it checks that it has been
    one unbroken run since tick 1. Raises AssertionError naming the first inconsistency."""
    sp = target.spec
    name, out_file = target.name, target.out_file
    info = target if isinstance(target, DumpInfo) else None
    by_role: dict[str, list[Line]] = {}
    for ln in lines:
        if not ln.failed:
            by_role.setdefault(ln.role, []).append(ln)
    runs: dict[str, list[Line]] = {}
    for role in sp.roles:
        if not by_role.get(role):
            raise _fail(name, f"no line from {role!r} after the restore", out_file)
        runs[role] = _last_run(by_role[role])
    run_start = min(run[0].offset for run in runs.values())
    for ln in lines:
        if ln.failed and ln.offset >= run_start:
            raise _fail(name, f"the workload reported: {ln.text}", out_file)
    unknown = {ln.role for ln in lines if not ln.failed} - set(sp.roles)
    if unknown:
        raise _fail(name, f"lines from unknown roles {sorted(unknown)}", out_file)

    role_pids: dict[str, int] = {}
    for role, run in runs.items():
        first = run[0]
        if info is not None:
            lo, hi = info.last_ticks[role], info.last_ticks_max[role]
            if not lo + 1 <= (first.tick or 0) <= hi + 1:
                expect = f"{lo + 1}" if lo == hi else f"{lo + 1}..{hi + 1}"
                raise _fail(name, f"{role}: first tick after the restore is {first.tick}, expected {expect} "
                            f"(last tick before the dump: {lo})", out_file)
            ref = info.pre_dump[role]
        else:
            if first.tick != 1:
                raise _fail(name, f"{role}: the run restarted at tick {first.tick}", out_file)
            ref = first
        pids_seen = {ln.pid for ln in run}
        if len(pids_seen) != 1 or None in pids_seen:
            raise _fail(name, f"{role}: lines of one run come from pids {sorted(map(str, pids_seen))}", out_file)
        role_pids[role] = first.pid or 0
        prev = ref
        for ln in run:
            if ln is not first and ln.tick != (prev.tick or 0) + 1:
                raise _fail(name, f"{role}: tick {ln.tick} follows tick {prev.tick}", out_file)
            for key in sp.constants:
                if ln.fields.get(key) != ref.fields.get(key):
                    raise _fail(name, f"{role} tick {ln.tick}: {key}={ln.fields.get(key)}, before the dump "
                                f"{key}={ref.fields.get(key)}", out_file)
            for key in sp.steps:
                try:
                    delta, ref_delta = int(ln.fields[key]) - (ln.tick or 0), int(ref.fields[key]) - (ref.tick or 0)
                except (KeyError, ValueError):
                    raise _fail(name, f"{role} tick {ln.tick}: no numeric {key}", out_file) from None
                if delta != ref_delta:
                    raise _fail(name, f"{role} tick {ln.tick}: {key}={ln.fields[key]} does not follow "
                                f"{key}={ref.fields[key]} at tick {ref.tick}", out_file)
            for key in sp.counters + sp.monotonic:
                if int(ln.fields.get(key, -1)) < int(prev.fields.get(key, -1)):
                    raise _fail(name, f"{role} tick {ln.tick}: {key} went back from {prev.fields.get(key)} "
                                f"to {ln.fields.get(key)}", out_file)
            prev = ln
        for key in sp.counters:
            if int(run[-1].fields.get(key, -1)) <= int(first.fields.get(key, -1)):
                raise _fail(name, f"{role}: {key} stuck at {first.fields[key]} from tick {first.tick} to "
                            f"{run[-1].tick} (that thread does not run)", out_file)

    if pids:
        if role_pids[sp.roles[0]] != pids[0]:
            raise _fail(name, f"the lines come from pid {role_pids[sp.roles[0]]}, not from the restored "
                        f"root {pids[0]}", out_file)
        missing = set(pids) - set(role_pids.values())
        if missing:
            raise _fail(name, f"no lines from restored pids {sorted(missing)}", out_file)
    if info is not None and same_pids and role_pids != info.roles:
        raise _fail(name, f"restored pids {role_pids} differ from the original {info.roles}", out_file)
    return Continuation(name, role_pids, {r: run[0].tick or 0 for r, run in runs.items()},
                        {r: run[-1].tick or 0 for r, run in runs.items()},
                        sum(len(run) for run in runs.values()))


def http_get(port: int, path: str = "/", timeout: float = 5.0) -> dict[str, str]:
    """GET http://127.0.0.1:port/path and parse its ``key=value`` body."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=scaled(timeout)) as r:
        body = r.read().decode()
    return dict(tok.split("=", 1) for tok in body.split() if "=" in tok)


def _check_http(target: DumpInfo | Workload, cont: Continuation) -> dict[str, str]:
    name, port = target.name, target.port
    assert port is not None
    ref = (target.pre_dump["main"] if isinstance(target, DumpInfo)
           else target.ticks()[0])
    bodies = []
    for _ in range(2):
        try:
            bodies.append(http_get(port))
        except OSError as e:
            raise _fail(name, f"GET http://127.0.0.1:{port}/ failed: {e}", target.out_file) from e
    first, second = bodies
    for key in ("token", "state"):
        if first.get(key) != ref.fields.get(key):
            raise _fail(name, f"GET answered {key}={first.get(key)}, before the dump {key}={ref.fields.get(key)}",
                        target.out_file)
    if first.get("pid") != str(cont.pids["main"]):
        raise _fail(name, f"GET answered by pid {first.get('pid')}, not {cont.pids['main']}", target.out_file)
    if int(first.get("tick", -1)) < cont.first_tick["main"]:
        raise _fail(name, f"GET answered tick={first.get('tick')}, before the restored run's first tick "
                    f"{cont.first_tick['main']}", target.out_file)
    if int(second.get("requests", -1)) != int(first.get("requests", -2)) + 1:
        raise _fail(name, f"request counter went {first.get('requests')} -> {second.get('requests')}",
                    target.out_file)
    return second


def assert_continues(target: DumpInfo | Workload, pids: int | Sequence[int] | None = None, *,
                     new_ticks: int = 3, timeout: float = 15.0, same_pids: bool = True) -> Continuation:
    """Prove that the restored process(es) continue from the dump point, whoever restored them.

    target: the DumpInfo of the dump that was restored (or a Workload: then it must simply have
    kept running since tick 1). pids: the restored root pid, or all restored pids (root first);
    default the original pids. Checks that: every pid is running; every role writes new_ticks new
    lines after this call; the restored run starts at the tick after the dump point and goes up by
    one; checksums/token are those of before the dump; fpos/seq follow on; every thread counter
    grows; no FAIL line; the lines come from the given pids (and, with same_pids, the original
    pids); httpd answers GET with its token, state checksum, pid and a counting request counter.
    Raises AssertionError with a clear message otherwise.
    """
    name, out_file = target.name, target.out_file
    pid_list = list(target.pids) if pids is None else ([pids] if isinstance(pids, int) else list(pids))
    if not pid_list:
        raise ValueError("no pids")
    start = target.resume_offset if isinstance(target, DumpInfo) else target.start_offset

    def check_alive() -> None:
        for p in pid_list:
            state = process_state(p)
            if state in (None, "Z", "X", "x"):
                raise _fail(name, f"pid {p} is {'gone' if state is None else 'a zombie'}", out_file)

    check_alive()
    _, now = read_lines(out_file)
    now = max(now, start)
    deadline = time.monotonic() + scaled(timeout)
    roles = target.spec.roles
    while True:
        fresh, _ = read_lines(out_file, now)
        failed = [ln for ln in fresh if ln.failed]
        if failed:
            raise _fail(name, f"the workload reported: {failed[0].text}", out_file)
        counts = {r: sum(1 for ln in fresh if ln.role == r) for r in roles}
        if all(c >= new_ticks for c in counts.values()):
            break
        check_alive()
        if time.monotonic() > deadline:
            raise _fail(name, f"new lines per role within {scaled(timeout):.0f} s: {counts} "
                        f"(wanted {new_ticks} each)", out_file)
        time.sleep(0.02)
    cont = check_continuation(target, read_lines(out_file, start)[0], pid_list, same_pids)
    if target.spec.needs_port:
        cont.http = _check_http(target, cont)
    check_alive()
    missing = [p for p in cont.pids.values() if not is_running(p)]
    if missing:
        raise _fail(name, f"pids {missing} stopped running", out_file)
    return cont


# --------------------------------------------------------------------------------------------------
# cleanup


def restored_pids(info: DumpInfo, pids: int | Sequence[int] | None = None) -> list[int]:
    """The live processes of a restored instance of info: the given pids, the original pids if
    they are running as our descendants or in the workload's directory, and their descendants."""
    cand = [] if pids is None else ([pids] if isinstance(pids, int) else list(pids))
    for p in info.pids:
        if p not in cand and is_running(p) and _belongs(p, info.rundir):
            cand.append(p)
    out: list[int] = []
    for p in cand:
        for q in [p, *descendants(p)]:
            if q not in out:
                out.append(q)
    return out


def kill_restored(info: DumpInfo, pids: int | Sequence[int] | None = None) -> None:
    """Kill and reap a restored instance of info (root first), then move its resume offset to the
    end of the output file, ready for the next restore."""
    targets = restored_pids(info, pids)
    if targets:
        kill_pids(targets)
    reap_zombie_children()
    info.mark()


def cleanup_dump_infos() -> None:
    """Kill leftovers of every DumpInfo made in this process (e.g. after a failed test)."""
    for info in _dump_infos:
        if restored_pids(info):
            kill_restored(info)
        else:
            info.mark()


def kill_processes_under(directory: Path) -> list[int]:
    """Kill and reap every process whose cwd is inside directory (session teardown)."""
    directory = Path(directory).resolve()
    victims = [p for p in _all_pids()
               if p != os.getpid() and (cwd := process_cwd(p)) is not None and cwd.is_relative_to(directory)]
    if victims:
        kill_pids(victims)
    reap_zombie_children()
    return victims


def new_session_dir() -> Path:
    """A fresh spice-compat-XXXX dir under $SPICE_COMPAT_TMP (default: the system temp dir)."""
    base = Path(os.environ.get("SPICE_COMPAT_TMP") or tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="spice-compat-", dir=base))


def remove_session_dir(directory: Path) -> None:
    """Kill what still runs there, then delete it unless SPICE_KEEP=1."""
    kill_processes_under(directory)
    if os.environ.get("SPICE_KEEP") != "1":
        shutil.rmtree(directory, ignore_errors=True)



# --------------------------------------------------------------------------------------------------
# test cgroups

CGROUP_ROOT = Path("/sys/fs/cgroup")
#: the hierarchies the cgroup tests use: a v1 controller and cgroup2 (directories under CGROUP_ROOT)
CGROUP_HIERARCHIES = ("pids", "unified")
_cgroup_ids = iter(range(1, 1 << 30))


def require_cgroup_hierarchies() -> None:
    """The cgroup tests need both hierarchies mounted where they look: fail loudly otherwise."""
    for h in CGROUP_HIERARCHIES:
        assert (CGROUP_ROOT / h / "cgroup.procs").exists(), f"{CGROUP_ROOT / h} is not a mounted cgroup hierarchy"


def cgroup_of(pid: int, tid: int | None = None) -> dict[str, str]:
    """hierarchy name ('' for cgroup2) -> path, from /proc/PID[/task/TID]/cgroup."""
    text = Path(f"/proc/{pid}/task/{tid}/cgroup" if tid else f"/proc/{pid}/cgroup").read_text()
    return {ln.split(":", 2)[1]: ln.split(":", 2)[2] for ln in text.splitlines()}


class CgroupDirs:
    """Test cgroups under one unique top directory, in any hierarchy under CGROUP_ROOT."""

    def __init__(self, tag: str) -> None:
        self.top = f"spicecg-{tag}-{os.getpid()}-{next(_cgroup_ids)}"

    def path(self, hierarchy: str, sub: str = "") -> Path:
        return CGROUP_ROOT / hierarchy / self.top / sub if sub else CGROUP_ROOT / hierarchy / self.top

    def make(self, hierarchy: str, sub: str = "") -> Path:
        d = self.path(hierarchy, sub)
        d.mkdir(parents=True, exist_ok=True)
        return d

    def move(self, hierarchy: str, tid: int, sub: str = "", thread: bool = False) -> None:
        """Put process tid (thread only: v1 `tasks`) into <hierarchy>/<top>[/sub], made if missing."""
        (self.make(hierarchy, sub) / ("tasks" if thread else "cgroup.procs")).write_text(str(tid))

    def exists(self) -> bool:
        return any(self.path(h).exists() for h in CGROUP_HIERARCHIES)

    def remove(self) -> None:
        """rmdir every directory under the top (whoever made it: the test or a restore), deepest
        first; their tasks must be dead and reaped."""
        errors = []
        for h in CGROUP_HIERARCHIES:
            top = self.path(h)
            if not top.exists():
                continue
            for p in [*sorted((d for d in top.rglob("*") if d.is_dir()), key=lambda d: -len(d.parts)), top]:
                for _ in range(200):  # a killed task leaves its cgroup a moment after it is reaped
                    try:
                        p.rmdir()
                        break
                    except FileNotFoundError:
                        break
                    except OSError as e:
                        err = e
                        time.sleep(0.01)
                else:
                    errors.append(f"{p}: {err}")
        assert not errors, f"could not remove test cgroups: {errors}"
