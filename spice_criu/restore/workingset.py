# SPDX-License-Identifier: MIT
"""Working sets: which pages a restored process touches first, recorded once, prefaulted after.

`spice restore --record-working-set` restores through /dev/spice with nothing prefaulted (private
pages stay in the page cache of pages-N.img until touched), lets the tree run until spice gets
SIGUSR1, SIGINT or SIGTERM, or --record-timeout seconds pass, then reads /proc/PID/pagemap of every
task: a present page was touched; a present, anonymous, exclusively mapped page of a private
mapping was written (a copy-on-write of a pages-image or file page, or a fresh anonymous page);
a present page-cache page (or the shared zero page) was only read. Pages copied into anonymous
memory at restore (the stack, argv/env: see backends/kmod.py) are present anyway and not recorded.

The result goes to `spice-working-set.json` in the image directory (CRIU ignores files it does not
know). Later kmod restores of that directory prefault exactly these pages and allocate private
copies of the written ones up front (pre-COW); the rest faults in from the page cache on demand.

Format (version 1)::

    {"format": "spice-working-set", "version": 1,
     "tasks": {"<pid>": {"digest": "<sha256 of mm-<pid>.img + pagemap-<pid>.img>",
                         "pages": <touched>, "written": <written>,
                         "ranges": [["0x<start>", <nr_pages>, "r" | "w"], ...]}}}

Ranges are sorted, non-overlapping runs of pages with the same access ("w": written). A task whose
digest no longer matches its images (the directory was dumped again) is ignored with a warning.
"""

from __future__ import annotations

import os
import time

from ..errors import SpiceError
from ..images.imagedir import ImageDir
from ..linux.signals import SIGINT, SIGTERM, SIGUSR1
from ..log import log
from ..vma import MAP_SHARED, PAGE_SIZE

TYPE_CHECKING = False  # typing costs ~10 ms of start-up; annotations are strings
if TYPE_CHECKING:
    from .plan import RestorePlan, TaskPlan

FILE_NAME = "spice-working-set.json"
FORMAT, VERSION = "spice-working-set", 1
STOP_SIGNALS = (SIGUSR1, SIGINT, SIGTERM)
PM_PRESENT, PM_SWAP, PM_FILE, PM_EXCLUSIVE = 1 << 63, 1 << 62, 1 << 61, 1 << 56

Range = tuple[int, int, bool]  # start, nr_pages, written


def digest(imgdir: ImageDir, pid: int) -> str:
    """What a recording belongs to: the task's VMA list and pagemap."""
    import hashlib

    h = hashlib.sha256()
    for name in (f"mm-{pid}.img", f"pagemap-{pid}.img"):
        try:
            with open(imgdir.file(name), "rb") as f:
                h.update(f.read())
        except OSError:
            h.update(b"-")
    return h.hexdigest()


def load(imgdir: ImageDir, pid: int) -> list[Range] | None:
    """The recorded working set of task `pid`, or None (no recording, or a stale/unreadable one)."""
    path = imgdir.file(FILE_NAME)
    if not os.path.exists(path):
        return None
    import json  # only when there is a recording: a restore without one does not pay for it

    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, ValueError) as e:
        log.warn("restore", f"{path}: unreadable working set ignored ({e})")
        return None
    try:
        if doc.get("format") != FORMAT or doc.get("version") != VERSION:
            raise ValueError(f"not a {FORMAT} v{VERSION} file")
        task = doc["tasks"].get(str(pid))
        if task is None:
            return None
        if task["digest"] != digest(imgdir, pid):
            log.warn("restore", f"{path}: the working set of task {pid} was recorded for other images; ignored")
            return None
        out = []
        for start, nr, acc in task["ranges"]:
            s, n = int(start, 16), int(nr)
            if s % PAGE_SIZE or n <= 0 or acc not in ("r", "w"):
                raise ValueError(f"bad range {[start, nr, acc]}")
            out.append((s, n, acc == "w"))
        return out
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        log.warn("restore", f"{path}: bad working set of task {pid} ignored ({e})")
        return None


# --- recording ---------------------------------------------------------------------------------------


def block_stop_signals() -> None:
    """Before the restore starts: the signals that end a recording wait in the pending set."""
    import signal

    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X", "x")


def wait_for_stop(pids: list[int], timeout: float) -> str:
    """Let the restored tree run until a stop signal reaches us or `timeout` passes."""
    import signal

    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return f"after {timeout:g} s"
        si = signal.sigtimedwait(STOP_SIGNALS, min(left, 0.05))
        if si is not None:
            return f"on {signal.Signals(si.si_signo).name}"
        gone = [p for p in pids if not _alive(p)]
        if gone:
            raise SpiceError("restore", f"task {gone[0]} exited before its working set was recorded")


def scan(t: TaskPlan) -> list[Range]:
    """Touched pages of a running restored task, from /proc/PID/pagemap over its dumped VMAs."""
    import array  # here, not at the top: array imports collections (~3 ms), every kmod restore loads this module

    from .backends.kmod import copy_vmas, request_vmas

    mm = t.mm
    copy = copy_vmas(mm)
    out: list[Range] = []
    from .task import PIDS  # (the images' pid -> ours)

    fd = os.open(f"/proc/{PIDS.host(t.pid)}/pagemap", os.O_RDONLY | os.O_CLOEXEC)
    try:
        for v in request_vmas(mm):
            if not v.prot:
                continue  # PROT_NONE: nothing can have been touched
            n = v.size // PAGE_SIZE
            raw = os.pread(fd, n * 8, v.start // PAGE_SIZE * 8)
            ents = array.array("Q")
            ents.frombytes(raw[: len(raw) - len(raw) % 8])
            copied = set()
            if v.start in copy:  # present because the module copied them in
                for r in v.runs:
                    copied.update(range((r.vaddr - v.start) // PAGE_SIZE, (r.end - v.start) // PAGE_SIZE))
            private = not v.flags & MAP_SHARED
            for i, e in enumerate(ents):
                if not e & (PM_PRESENT | PM_SWAP) or i in copied:
                    continue
                written = private and not e & PM_FILE and bool(e & PM_EXCLUSIVE) and bool(e & PM_PRESENT)
                addr = v.start + i * PAGE_SIZE
                last = out[-1] if out else None
                if last and last[2] == written and last[0] + last[1] * PAGE_SIZE == addr:
                    out[-1] = (last[0], last[1] + 1, written)
                else:
                    out.append((addr, 1, written))
    finally:
        os.close(fd)
    return out


def record(plan: RestorePlan, timeout: float) -> dict[int, list[Range]]:
    """Wait (see wait_for_stop), then record every task's working set into FILE_NAME."""
    from .task import PIDS

    pids = [PIDS.host(t.pid) for t in plan.tasks]
    why = wait_for_stop(pids, timeout)
    sets: dict[int, list[Range]] = {}
    for t in plan.tasks:
        try:
            sets[t.pid] = scan(t)
        except OSError as e:
            raise SpiceError("restore", f"task {t.pid}: cannot read its pagemap: {e.strerror}") from None
    doc = {"format": FORMAT, "version": VERSION, "tasks": {}}
    for t in plan.tasks:
        rs = sets[t.pid]
        doc["tasks"][str(t.pid)] = {
            "digest": digest(plan.imgdir, t.pid),
            "pages": sum(n for _, n, _ in rs),
            "written": sum(n for _, n, w in rs if w),
            "ranges": [[f"0x{s:x}", n, "w" if w else "r"] for s, n, w in rs],
        }
        log.info(f"working set of task {t.pid} ({why}): {doc['tasks'][str(t.pid)]['pages']} pages touched, "
                 f"{doc['tasks'][str(t.pid)]['written']} written")
    import json

    path = plan.imgdir / FILE_NAME
    tmp = path.with_name(f".{FILE_NAME}.{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            json.dump(doc, f, separators=(",", ":"))
            f.write("\n")
        os.replace(tmp, path)
    except OSError as e:
        raise SpiceError("restore", f"cannot write {path}: {e.strerror}") from None
    return sets
