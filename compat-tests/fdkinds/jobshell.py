# SPDX-License-Identifier: MIT
"""jobshell: a minimal job-control shell on a pty slave, for --shell-job tests.

    python jobshell.py SLAVE_PATH CMD_FD

It starts its own session with the pty slave as controlling terminal, becomes a child subreaper,
then reads one JSON command per line from CMD_FD and answers on stdout (a file of the test):
  {"run": [argv...], "cwd": dir}  -> runs argv in its own process group, in the foreground of the
                                    terminal, stdio on the terminal; waits: {"rc": N}
  {"spawn": [argv...], "cwd": dir} -> same without waiting: {"pid": P}
  {"reap": true}                   -> reaps exited children: {"reaped": [...]}
  "bg": true with run/spawn          -> the command runs in the background (the terminal stays put)
Exactly like an interactive shell running `criu dump --shell-job` / `criu restore --shell-job`.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import signal
import sys
import termios


def main() -> None:
    slave, cmd_fd = sys.argv[1], int(sys.argv[2])
    os.setsid()
    tty = os.open(slave, os.O_RDWR)
    fcntl.ioctl(tty, termios.TIOCSCTTY, 0)
    ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: restored -d jobs come back here
    signal.signal(signal.SIGTTOU, signal.SIG_IGN)  # we hand the terminal back and forth
    out = sys.stdout
    for line in os.fdopen(cmd_fd):
        req = json.loads(line)
        if "reap" in req:
            reaped = []
            while True:
                try:
                    pid, _ = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if not pid:
                    break
                reaped.append(pid)
            print(json.dumps({"reaped": reaped}), file=out, flush=True)
            continue
        argv = req.get("run") or req["spawn"]
        pid = os.fork()
        if pid == 0:
            os.setpgid(0, 0)
            if not req.get("bg"):
                os.tcsetpgrp(tty, os.getpgrp())
            for fd in (0, 1, 2):
                os.dup2(tty, fd)
            signal.signal(signal.SIGTTOU, signal.SIG_DFL)
            os.chdir(req.get("cwd") or "/")
            os.closerange(3, 1024)
            try:
                os.execvp(argv[0], argv)
            finally:
                os._exit(127)
        try:
            os.setpgid(pid, pid)  # both sides, as shells do (whoever runs first)
        except OSError:
            pass
        if "run" in req:
            _, status = os.waitpid(pid, 0)
            if not req.get("bg"):
                os.tcsetpgrp(tty, os.getpgrp())
            print(json.dumps({"rc": os.waitstatus_to_exitcode(status)}), file=out, flush=True)
        else:
            print(json.dumps({"pid": pid}), file=out, flush=True)


if __name__ == "__main__":
    main()
