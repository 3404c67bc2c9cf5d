# SPDX-License-Identifier: MIT
"""Credentials and the other per-process knobs: creds/caps/securebits/seccomp mode per thread, and
rlimits, personality, loginuid, oom_score_adj, child subreaper, membarrier registrations per task.

Mirror of restore/creds.py. Ids, groups and capability sets come from /proc/PID/task/TID/status
(what CRIU's parasite gets from getresuid/capget); only securebits (per thread) and the subreaper and
membarrier registrations (per process) need a syscall inside the task.
"""

from __future__ import annotations

import resource

from ..errors import SpiceError
from ..images.lite import Message
from ..linux.syscalls import NR
from . import proc
from .intask import Batch

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

PR_GET_CHILD_SUBREAPER = 37
MEMBARRIER_CMD_GET_REGISTRATIONS = 1 << 9
RLIM_NLIMITS = 16
RLIM_INFINITY_IMG = (1 << 64) - 1


def fill_creds(core: Message, status: dict[str, str], secbits: int) -> None:
    c = core.thread_core.creds
    uids = [int(x) for x in status["Uid"].split()]
    gids = [int(x) for x in status["Gid"].split()]
    c.uid, c.euid, c.suid, c.fsuid = uids
    c.gid, c.egid, c.sgid, c.fsgid = gids
    c.cap_inh.extend(proc.caps_words(status["CapInh"]))
    c.cap_prm.extend(proc.caps_words(status["CapPrm"]))
    c.cap_eff.extend(proc.caps_words(status["CapEff"]))
    c.cap_bnd.extend(proc.caps_words(status["CapBnd"]))
    c.secbits = secbits
    c.groups.extend(int(g) for g in status.get("Groups", "").split())
    if status.get("NoNewPrivs", "0") != "0":
        c.no_new_privs = int(status["NoNewPrivs"])
    c.cap_amb.extend(proc.caps_words(status.get("CapAmb", "0")))


def ask_task_in_task(b: Batch, tc: Message) -> Callable[[], None]:
    """child subreaper and membarrier registrations (prctl / membarrier inside the task)."""
    buf = b.buffer(4)
    subreaper = b.call(NR.prctl, PR_GET_CHILD_SUBREAPER, buf, 0, 0, 0)
    membarrier = b.call(NR.membarrier, MEMBARRIER_CMD_GET_REGISTRATIONS, 0, 0)

    def answer() -> None:
        b.check(subreaper)
        tc.child_subreaper = bool(int.from_bytes(b.bytes(buf, 4), "little"))
        mask = b.result(membarrier)
        if mask > 0:
            tc.membarrier_registration_mask = mask

    return answer


def atoi(text: str) -> int:
    """C's atoi: the leading decimal digits. CRIU 4.2.1 reads /proc/PID/personality (printed in hex)
    this way ("00040000" -> 40000); spice stores the same value so its images mean what CRIU's mean
    to every restorer (spice restore decodes it back, CRIU restore applies it as CRIU's own)."""
    s = text.lstrip()
    sign = s[:1] if s[:1] in "+-" else ""
    digits = s[len(sign):]
    n = len(digits) - len(digits.lstrip("0123456789"))
    return int(sign + digits[:n]) & 0xFFFFFFFF if n else 0


def _read_int(path: str, what: str) -> int:
    return int(proc.read_text(path, what).split()[0])


def _limits_file(pid: int) -> list[tuple[int, int]]:
    """/proc/PID/limits, one line per resource in RLIMIT_* order ("unlimited" = infinity)."""
    out = []
    for line in proc.read_text(f"/proc/{pid}/limits", f"task {pid}").splitlines()[1:]:
        soft, hard = line[26:].split()[:2]
        out.append(tuple(resource.RLIM_INFINITY if v == "unlimited" else int(v) for v in (soft, hard)))
    return out


def fill_task_knobs(pid: int, tc: Message) -> None:
    """rlimits, personality, loginuid, oom_score_adj (all readable from outside)."""
    limits: list[tuple[int, int]] | None = None
    for res in range(RLIM_NLIMITS):
        try:
            cur, mx = resource.prlimit(pid, res)
        except PermissionError:
            # another uid/gid and no CAP_SYS_RESOURCE (prlimit's rule): the limits file has them too
            limits = limits or _limits_file(pid)
            if res >= len(limits):
                raise SpiceError("dump", f"task {pid}: can't get rlimit {res}") from None
            cur, mx = limits[res]
        except OSError as e:
            raise SpiceError("dump", f"task {pid}: can't get rlimit {res}: {e.strerror}") from None
        tc.rlimits.rlimits.add(cur=RLIM_INFINITY_IMG if cur == resource.RLIM_INFINITY else cur,
                               max=RLIM_INFINITY_IMG if mx == resource.RLIM_INFINITY else mx)
    tc.personality = atoi(proc.read_text(f"/proc/{pid}/personality", f"task {pid}"))
    try:
        tc.loginuid = _read_int(f"/proc/{pid}/loginuid", f"task {pid}")
    except SpiceError:
        pass
    tc.oom_score_adj = _read_int(f"/proc/{pid}/oom_score_adj", f"task {pid}")
