# SPDX-License-Identifier: MIT
"""A POSIX message queue (mq_open), as programs using mq_send/mq_receive between processes hold it.

    python mqueue.py OUTFILE [unlink]

Opens /spice-mq-<pid> (with ``unlink`` it then removes the name: the fd keeps the queue) and every
~100 ms sends a message and receives it back: ``tick=N role=main pid=P token=T seq=N got=<bytes>``.
Neither criu 4.2 nor spice has an image for a message queue: a dump must fail and leave it running.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

import ticks


class MqAttr(ctypes.Structure):
    _fields_ = [("mq_flags", ctypes.c_long), ("mq_maxmsg", ctypes.c_long), ("mq_msgsize", ctypes.c_long),
                ("mq_curmsgs", ctypes.c_long), ("pad", ctypes.c_long * 4)]


def main() -> None:
    if len(sys.argv) not in (2, 3):
        sys.exit("usage: mqueue.py OUTFILE [unlink]")
    out = ticks.Out(sys.argv[1])
    rt = ctypes.CDLL(ctypes.util.find_library("rt") or "librt.so.1", use_errno=True)
    rt.mq_open.restype = ctypes.c_int
    rt.mq_open.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_int, ctypes.POINTER(MqAttr)]
    rt.mq_receive.restype = ctypes.c_ssize_t
    name = f"/spice-mq-{os.getpid()}".encode()
    attr = MqAttr(0, 4, 64, 0)
    mq = rt.mq_open(name, os.O_CREAT | os.O_RDWR, 0o600, ctypes.byref(attr))
    if mq < 0:
        out.fail(f"mq_open: {os.strerror(ctypes.get_errno())}")
    if sys.argv[2:] == ["unlink"]:
        rt.mq_unlink(name)
    buf = ctypes.create_string_buffer(64)

    def step(tick: int) -> None:
        if rt.mq_send(mq, b"ping", 4, 1) != 0:
            out.fail(f"mq_send: {os.strerror(ctypes.get_errno())}")
        got = rt.mq_receive(mq, buf, 64, None)
        out.line(tick, got=got)

    ticks.run(step)


if __name__ == "__main__":
    main()
