# SPDX-License-Identifier: MIT
"""The one exception type users see: a message naming the file/object, printed CRIU-style, exit 1."""

from __future__ import annotations


class SpiceError(Exception):
    """A user-facing failure.

    `where` is the subsystem ("images", "restore", "dump", "ptrace"...), shown as
    `Error (spice/<where>): <message>` in logs and on stderr, the way CRIU prints
    `Error (criu/file.c:LINE): ...` so tools grepping for `Error` keep working.
    """

    def __init__(self, where: str, message: str) -> None:
        super().__init__(message)
        self.where = where
        self.message = message

    def criu_line(self) -> str:
        return f"Error (spice/{self.where}): {self.message}"

    def __str__(self) -> str:
        return self.message


class ImageError(SpiceError):
    """A corrupt, truncated, missing or unknown image file (always names the file, and the offset)."""

    def __init__(self, path: object, message: str, offset: int | None = None) -> None:
        where = f"{path}" if offset is None else f"{path} at offset {offset}"
        super().__init__("images", f"{where}: {message}")
        self.path = path
        self.offset = offset
