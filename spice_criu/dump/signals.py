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
from ..linux import ptrace as pt
from ..linux.signals import SIGKILL, SIGSTOP
from ..linux.syscalls import NR
from .intask import Batch

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

SIGACTION_SIGNALS = [s for s in range(1, 65) if s not in (SIGKILL, SIGSTOP)]
_KSIGACTION = struct.Struct("<QQQQ")  # handler, flags, restorer, mask (x86_64 struct sigaction)


def ask_sigactions(b: Batch, tc: Message) -> Callable[[], None]:
    """Every signal's disposition (rt_sigaction(sig, NULL, &old)), into tc.sigactions once the batch ran."""
    size = _KSIGACTION.size
    base = b.buffer(size * len(SIGACTION_SIGNALS))
    first = len(b.calls)
    for i, sig in enumerate(SIGACTION_SIGNALS):
        b.call(NR.rt_sigaction, sig, 0, base + i * size, 8)

    def answer() -> None:
        for i in range(len(SIGACTION_SIGNALS)):
            b.check(first + i)
        raw = b.bytes(base, size * len(SIGACTION_SIGNALS))
        for i in range(len(SIGACTION_SIGNALS)):
            handler, flags, restorer, mask = _KSIGACTION.unpack_from(raw, i * size)
            tc.sigactions.add(sigaction=handler, flags=flags, restorer=restorer, mask=mask, compat_sigaction=False)

    return answer


def queue(tid: int, shared: bool, out: Message) -> None:
    """Queued siginfos of a thread (or of the whole process) into a signal_queue_entry."""
    out.SetInParent()
    for si in pt.peeksiginfo(tid, shared=shared):
        out.signals.add(siginfo=bytes(si)[: ctypes.sizeof(si)])
