# SPDX-License-Identifier: MIT
"""Credentials, capabilities and the other per-process knobs (rlimits, personality, oom score...).

Credentials go last: dropping privileges earlier would forbid the steps that need them.
"""

from __future__ import annotations

import os
import resource
import struct

from ..errors import SpiceError
from ..linux.syscalls import NR
from ..log import log
from . import seccomp
from .task import TaskCtl

PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_KEEPCAPS, PR_SET_NAME = 1, 4, 8, 15
PR_CAPBSET_DROP, PR_SET_SECUREBITS, PR_SET_CHILD_SUBREAPER = 24, 28, 36
PR_SET_NO_NEW_PRIVS, PR_SET_THP_DISABLE, PR_CAP_AMBIENT = 38, 41, 47
PR_CAP_AMBIENT_RAISE, PR_CAP_AMBIENT_CLEAR_ALL = 2, 4
SECBIT_KEEP_CAPS = 1 << 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
CAP_LAST = 40


def _caps_of(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, val = line.partition(":")
            if key in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
                out[key] = int(val, 16)
    return out


def _words(v) -> int:
    w = list(v)
    return (w[0] if w else 0) | ((w[1] if len(w) > 1 else 0) << 32)


def _current_matches(pid: int, c) -> bool:
    caps = _caps_of(pid)
    same_ids = (os.getresuid(), os.getresgid()) == ((c.uid, c.euid, c.suid), (c.gid, c.egid, c.sgid))
    same_caps = (
        caps.get("CapInh") == _words(c.cap_inh)
        and caps.get("CapPrm") == _words(c.cap_prm)
        and caps.get("CapEff") == _words(c.cap_eff)
        and caps.get("CapBnd") == _words(c.cap_bnd)
        and caps.get("CapAmb", 0) == _words(c.cap_amb)
    )
    return same_ids and same_caps and sorted(os.getgroups()) == sorted(c.groups) and not c.secbits


def install_creds(task: TaskCtl, tid: int, core) -> None:
    """setgroups/setres[ug]id/capset/bounding/ambient/securebits, as the image says, for one thread;
    then its seccomp mode and filters, which go after everything (they could forbid the rest)."""
    _install_creds(task, tid, core)
    mode = seccomp.mode_of(core)
    if mode != seccomp.MODE_DISABLED:
        seccomp.install(task, tid, mode, task.plan.seccomp.get(tid, []))


def _install_creds(task: TaskCtl, tid: int, core) -> None:
    tcore = core.thread_core
    if not tcore.HasField("creds"):
        return
    c = tcore.creds
    if not c.no_new_privs and _current_matches(task.pid, c):
        return

    def call(nr: int, *a: int, what: str) -> int:
        return task.sys(nr, *a, what=what, tid=tid)

    groups = struct.pack(f"<{len(c.groups)}I", *c.groups)
    call(NR.setgroups, len(c.groups), task.put(groups) if groups else 0, what="setgroups")
    bnd = _words(c.cap_bnd)
    for cap in range(CAP_LAST + 1):
        if not bnd & (1 << cap):
            r = task.threads[tid].syscall(NR.prctl, PR_CAPBSET_DROP, cap, 0, 0, 0)
            if r < 0 and -r != 22:  # EINVAL: capability unknown to this kernel
                raise SpiceError("restore", f"task {task.pid}: dropping capability {cap}: {os.strerror(-r)}")
    call(NR.prctl, PR_SET_SECUREBITS, c.secbits | SECBIT_KEEP_CAPS, 0, 0, 0, what="securebits")
    call(NR.setresgid, c.gid, c.egid, c.sgid, what="setresgid")
    call(NR.setresuid, c.uid, c.euid, c.suid, what="setresuid")
    call(NR.setfsgid, c.fsgid, what="setfsgid")
    call(NR.setfsuid, c.fsuid, what="setfsuid")
    hdr = task.put(struct.pack("<Ii", _LINUX_CAPABILITY_VERSION_3, 0))
    # leaving uid 0 kept the permitted set (KEEP_CAPS) but emptied the effective one: take the
    # permitted set back into effect for the last privileged step, the final securebits
    prm = _caps_of(task.pid)["CapPrm"]
    inh = _caps_of(task.pid)["CapInh"]
    call(NR.capset, hdr, task.put(_cap_data(prm, prm, inh)), what="capset (regain)")
    call(NR.prctl, PR_SET_SECUREBITS, c.secbits, 0, 0, 0, what="securebits")
    call(NR.capset, hdr, task.put(_cap_data(_words(c.cap_eff), _words(c.cap_prm), _words(c.cap_inh))),
         what="capset")
    call(NR.prctl, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0, what="clear ambient caps")
    amb = _words(c.cap_amb)
    for cap in range(CAP_LAST + 1):
        if amb & (1 << cap):
            call(NR.prctl, PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0, what=f"raise ambient cap {cap}")
    if c.no_new_privs:
        call(NR.prctl, PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0, what="no_new_privs")
    task.reset_scratch()


def _cap_data(eff: int, prm: int, inh: int) -> bytes:
    """The two __user_cap_data_struct words of capset v3."""
    return b"".join(struct.pack("<III", (eff >> s) & 0xFFFFFFFF, (prm >> s) & 0xFFFFFFFF, (inh >> s) & 0xFFFFFFFF)
                    for s in (0, 32))


def install_task_knobs(task: TaskCtl) -> None:
    """Process-wide state outside memory and fds: rlimits, personality, oom score, subreaper..."""
    tc = task.plan.tc
    pid = task.pid
    if tc.HasField("rlimits"):
        for res, rl in enumerate(tc.rlimits.rlimits):
            try:
                cur = resource.prlimit(pid, res)
                want = (_rlim(rl.cur), _rlim(rl.max))
                if cur != want:
                    resource.prlimit(pid, res, want)
            except (OSError, ValueError) as e:
                raise SpiceError("restore", f"task {pid}: rlimit {res}: {e}") from None
    if tc.personality:
        task.sys(NR.personality, image_personality(tc.personality), what="personality")
    if tc.HasField("oom_score_adj"):
        with open(f"/proc/{pid}/oom_score_adj", "w") as f:
            f.write(str(tc.oom_score_adj))
    if tc.child_subreaper:
        task.sys(NR.prctl, PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0, what="child subreaper")
    if tc.HasField("loginuid") and tc.loginuid != 0xFFFFFFFF:
        try:
            with open(f"/proc/{pid}/loginuid", "w") as f:
                f.write(str(tc.loginuid))
        except OSError as e:
            log.warn("restore", f"task {pid}: cannot restore loginuid {tc.loginuid}: {e.strerror}")
    mm = task.plan.mm
    if mm.dumpable is not None:
        task.sys(NR.prctl, PR_SET_DUMPABLE, mm.dumpable, 0, 0, 0, what="dumpable")
    if mm.thp_disabled:
        task.sys(NR.prctl, PR_SET_THP_DISABLE, 1, 0, 0, 0, what="thp_disabled")


def image_personality(value: int) -> int:
    """CRIU stores /proc/PID/personality's hex text parsed as decimal ("00040000" -> 40000); undo it."""
    try:
        return int(str(value), 16)
    except ValueError:
        return value


def _rlim(v: int) -> int:
    return resource.RLIM_INFINITY if v >= (1 << 64) - 1 else v


def install_thread_knobs(task: TaskCtl, b, tid: int, core) -> None:
    """Per-thread name and parent-death signal (queued on the thread's batch `b`), scheduling
    (policy, priority, nice: set from outside)."""
    tcore = core.thread_core
    host = task.host_tid(tid)  # (set from outside: our tid of it)
    try:
        if tcore.HasField("sched_policy") and tcore.sched_policy not in (0, os.sched_getscheduler(host)):
            os.sched_setscheduler(host, tcore.sched_policy, os.sched_param(tcore.sched_prio))
        if tcore.HasField("sched_nice") and os.getpriority(os.PRIO_PROCESS, host) != tcore.sched_nice:
            os.setpriority(os.PRIO_PROCESS, host, tcore.sched_nice)
    except OSError as e:
        raise SpiceError("restore", f"thread {tid}: scheduling policy/nice: {e.strerror}") from None
    comm = tcore.comm if tcore.HasField("comm") else (core.tc.comm if core.HasField("tc") else "")
    if comm:
        b.add(NR.prctl, PR_SET_NAME, task.put_str(comm[:15]), 0, 0, 0, what="set name")
    if tcore.pdeath_sig:
        b.add(NR.prctl, PR_SET_PDEATHSIG, tcore.pdeath_sig, 0, 0, 0, what="pdeath_sig")
