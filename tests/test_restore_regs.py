# SPDX-License-Identifier: MIT
"""restore/threads.final_regs: the registers a restored thread resumes with. A call the dump
recorded as interrupted with EINTR because its restart block was lost (poll, nanosleep,
clock_nanosleep, futex waits) is issued again; any other EINTR is the program's to see."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from spice_criu.arch import x86
from spice_criu.dump import threads as dump_threads
from spice_criu.linux import ptrace
from spice_criu.linux.syscalls import NR
from spice_criu.restore import threads

U64 = (1 << 64) - 1


def _thread(**regs: int) -> SimpleNamespace:
    """A ThreadPlan stand-in whose image registers are `regs` (others 0), as the dump stored them."""
    gp = SimpleNamespace(**{f: 0 for f in x86.GP_FIELDS})
    for k, v in regs.items():
        setattr(gp, k, v & U64)
    return SimpleNamespace(core=SimpleNamespace(thread_info=SimpleNamespace(gpregs=gp)))


def _dumped(nr: int, err: int, ip: int = 0x1002, **args: int) -> SimpleNamespace:
    """A thread frozen on the way out of syscall nr returning -err, stored as the dump stores it."""
    live = ptrace.UserRegs()
    live.orig_ax, live.ax, live.ip = nr, -err & U64, ip
    for k, v in args.items():
        setattr(live, k, v)
    img = dump_threads.image_regs(live)
    return _thread(**{f: getattr(img, f) for f in x86.GP_FIELDS})


@pytest.mark.parametrize("nr", [NR.poll, NR.nanosleep, NR.clock_nanosleep, NR.futex])
def test_lost_restart_block_calls_are_issued_again(nr: int) -> None:
    r = threads.final_regs(_dumped(nr, 516, di=0x7000, si=1, dx=500))
    assert (r.ax, r.ip, r.orig_ax) == (nr, 0x1000, U64)  # the syscall instruction, the call's own number
    assert (r.di, r.si, r.dx) == (0x7000, 1, 500)  # with its arguments


@pytest.mark.parametrize("nr", [NR.epoll_wait, NR.read, NR.pause])
def test_other_eintr_stays(nr: int) -> None:
    """epoll_wait returns EINTR itself (never restarted, documented): the program sees it, as after
    a criu restore."""
    r = threads.final_regs(_dumped(nr, 4))
    assert (r.ax, r.ip) == (-4 & U64, 0x1002)


def test_restartable_calls_stay_rewound() -> None:
    r = threads.final_regs(_dumped(NR.read, 512))
    assert (r.ax, r.ip, r.orig_ax) == (NR.read, 0x1000, U64)
