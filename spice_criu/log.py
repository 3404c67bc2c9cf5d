# SPDX-License-Identifier: MIT
"""CRIU-style logging: `-v0..4`, `-o FILE` (relative to the work dir, `-` = stdout), timestamps at -v3+.

Errors print as `Error (spice/<where>): msg` and warnings as `Warn  (spice/<where>): msg`: runc, crun,
podman and zdtm grep CRIU logs for exactly these prefixes.
"""

from __future__ import annotations

import os
import sys
import time

TYPE_CHECKING = False  # typing costs ~10 ms of start-up; annotations are strings
if TYPE_CHECKING:
    from typing import TextIO

LOG_MSG, LOG_ERROR, LOG_WARN, LOG_INFO, LOG_DEBUG = 0, 1, 2, 3, 4


class Log:
    def __init__(self) -> None:
        self.level = 2
        self.out: TextIO = sys.stderr
        self.start = time.monotonic()
        self.first_error: str | None = None
        self._owned = False

    def setup(self, level: int = 2, path: str | None = None, workdir: str | None = None) -> None:
        self.level = level
        if path == "-":
            self.out = sys.stdout
        elif path:
            full = path if os.path.isabs(path) or not workdir else os.path.join(workdir, path)
            fd = os.open(full, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC, 0o600)
            self.out = os.fdopen(fd, "w", buffering=1)
            self._owned = True
        self.info(f"Version: 4.2 (spice-criu {_version()})")
        self.info(f"Running on {' '.join(os.uname())}")

    def _write(self, level: int, text: str) -> None:
        if level > self.level:
            return
        prefix = f"({time.monotonic() - self.start:08.6f}) " if self.level >= LOG_INFO else ""
        try:
            self.out.write(prefix + text + "\n")
        except (OSError, ValueError):
            pass

    def error(self, where: str, msg: str) -> None:
        line = f"Error (spice/{where}): {msg}"
        if self.first_error is None:
            self.first_error = line
        self._write(LOG_ERROR, line)

    def warn(self, where: str, msg: str) -> None:
        self._write(LOG_WARN, f"Warn  (spice/{where}): {msg}")

    def info(self, msg: str) -> None:
        self._write(LOG_INFO, msg)

    def debug(self, msg: str) -> None:
        self._write(LOG_DEBUG, msg)

    def close(self) -> None:
        if self._owned:
            self.out.close()
            self.out = sys.stderr
            self._owned = False


def _version() -> str:
    from . import __version__

    return __version__


log = Log()
