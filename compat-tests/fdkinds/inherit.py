# SPDX-License-Identifier: MIT
"""inherit: a task whose stdout is a pipe read by someone outside the dump (--inherit-fd).

    python inherit.py OUTFILE

Every ~100 ms it writes "seq N TOKEN" to stdout (the pipe) and appends
    tick=N role=main pid=P token=T seq=N
to OUTFILE. A write error (EPIPE once nobody reads the pipe) is a FAIL line and exit 1.
"""

from __future__ import annotations

import os
import signal
import sys
import time


def main() -> None:
    out = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    pid = os.getpid()
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    token = os.urandom(8).hex()
    tick = 0
    while True:
        tick += 1
        try:
            os.write(1, f"seq {tick} {token}\n".encode())
        except OSError as e:
            os.write(out, f"FAIL role=main pid={pid} tick {tick}: stdout: {e}\n".encode())
            os._exit(1)
        os.write(out, f"tick={tick} role=main pid={pid} token={token} seq={tick}\n".encode())
        time.sleep(0.1)


if __name__ == "__main__":
    main()
