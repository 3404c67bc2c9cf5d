# SPDX-License-Identifier: MIT
"""Signal state: dispositions (tc.sigactions), blocked masks, pending signal queues.

Mirror of restore/signals.py. Dispositions can only be asked by the task itself: rt_sigaction(sig,
NULL, &old) injected for every signal CRIU stores (1..64 without SIGKILL/SIGSTOP, 62 entries, the
count restore checks). Queued signals are peeked from outside (PTRACE_PEEKSIGINFO), per thread and
process-wide, without dequeuing them.
"""

from __future__ import annotations

import ctypes
import struct

from ..images.lite import Message
from ..inject import Remote
from ..linux import ptrace as pt
from ..linux.syscalls import NR

SIGKILL, SIGSTOP = 9, 19
SIGACTION_SIGNALS = [s for s in range(1, 65) if s not in (SIGKILL, SIGSTOP)]
_KSIGACTION = struct.Struct("<QQQQ")  # handler, flags, restorer, mask (x86_64 struct sigaction)


def collect_sigactions(r: Remote, tc: Message) -> None:
    """Every signal's disposition, read inside the task into its scratch area in one pass."""
    base = r.scratch
    size = _KSIGACTION.size
    for i, sig in enumerate(SIGACTION_SIGNALS):
        r.check(NR.rt_sigaction, sig, 0, base + i * size, 8)
    raw = r.read(base, size * len(SIGACTION_SIGNALS))
    for i in range(len(SIGACTION_SIGNALS)):
        handler, flags, restorer, mask = _KSIGACTION.unpack_from(raw, i * size)
        tc.sigactions.add(sigaction=handler, flags=flags, restorer=restorer, mask=mask, compat_sigaction=False)


def queue(tid: int, shared: bool, out: Message) -> None:
    """Queued siginfos of a thread (or of the whole process) into a signal_queue_entry."""
    out.SetInParent()
    for si in pt.peeksiginfo(tid, shared=shared):
        out.signals.add(siginfo=bytes(si)[: ctypes.sizeof(si)])
