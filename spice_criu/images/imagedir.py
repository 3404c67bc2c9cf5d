# SPDX-License-Identifier: MIT
"""An image directory: named access to its images with CRIU's "missing image reads as empty" rule.

Paths are plain strings (pathlib costs the restore's start-up several ms); `dir / name` still gives
a pathlib.Path for callers that want one, `dir.file(name)` the string.
"""

from __future__ import annotations

import os

from ..errors import ImageError, SpiceError
from . import codec
from .magic import magic_for_filename

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path

    from google.protobuf.message import Message

#: written first by `spice dump`, removed last: a directory holding it is not restorable.
PARTIAL_MARKER = "spice-dump.partial"


class ImageDir:
    """lite=True: images decode into spice_criu.images.lite messages (the restore path: no protobuf)."""

    def __init__(self, path: str | os.PathLike, lite: bool = False) -> None:
        self.path = os.fspath(path)
        self.lite = lite
        if not os.path.isdir(self.path):
            raise SpiceError("images", f"{self.path}: images directory does not exist")
        self._cache: dict[str, codec.Image] = {}

    def __truediv__(self, name: str) -> Path:
        from pathlib import Path

        return Path(self.path, name)

    def file(self, name: str) -> str:
        """The path of an image of this directory."""
        return os.path.join(self.path, name)

    def exists(self, name: str) -> bool:
        return os.path.exists(os.path.join(self.path, name))

    def load(self, name: str) -> codec.Image:
        img = self._cache.get(name)
        if img is None:
            expect = magic_for_filename(name)
            if expect is None:
                raise ImageError(self.file(name), "unknown image name")
            img = codec.load(self.file(name), expect=expect, lite=self.lite)
            for i, e in enumerate(img.entries):
                if not e.msg.IsInitialized():  # crit shows such images; restoring from them is wrong
                    missing = ", ".join(e.msg.FindInitializationErrors())
                    raise ImageError(self.file(name), f"entry {i} lacks required fields: {missing}")
            self._cache[name] = img
        return img

    def entries(self, name: str, optional: bool = True) -> list[Message]:
        """All messages of an image; a missing optional image is empty, as in CRIU."""
        if optional and not self.exists(name):
            return []
        return self.load(name).messages

    def one(self, name: str, optional: bool = False) -> Message | None:
        """The single message of a one-entry image (inventory, core, mm, fs, ids...)."""
        if optional and not self.exists(name):
            return None
        msgs = self.load(name).messages
        if len(msgs) != 1:
            raise ImageError(self.file(name), f"expected exactly one entry, found {len(msgs)}")
        return msgs[0]

    def check_restorable(self) -> None:
        if self.exists(PARTIAL_MARKER):
            raise SpiceError("images", f"{self.path}: incomplete dump ({PARTIAL_MARKER} present)")
        if not self.exists("inventory.img"):
            raise ImageError(self.file("inventory.img"), "no such image file (not a CRIU image directory?)")
