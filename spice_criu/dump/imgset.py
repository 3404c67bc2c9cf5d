# SPDX-License-Identifier: MIT
"""The image directory being written: a partial marker first, inventory.img last.

Images are built in memory per kind and written when the dump has succeeded (page data is streamed
to pages-N.img as it is read). Until then the directory carries PARTIAL_MARKER and no inventory.img,
so neither spice nor real CRIU will restore a half-written dump; a failed dump removes every file it
created and leaves only the marker, holding the reason.
"""

from __future__ import annotations

import os

from ..errors import SpiceError
from ..images import codec
from ..images.imagedir import PARTIAL_MARKER
from ..images.lite import Message

TYPE_CHECKING = False  # typing costs ~10 ms of start-up; annotations are strings
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any


class ImageSet:
    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)  # str paths: no pathlib import at start-up
        if not os.path.isdir(self.path):
            raise SpiceError("dump", f"images directory {self.path} does not exist")
        self._images: dict[str, tuple[str, list[Message], list[Any]]] = {}
        self.created: list[str] = []
        self.committed = False

    def begin(self) -> None:
        """Mark the directory partial and drop a previous dump's inventory (it would vouch for a
        mix of old and new images)."""
        try:
            self._write_marker("spice dump in progress\n")
            if os.path.lexists(inv := os.path.join(self.path, "inventory.img")):
                os.unlink(inv)
        except OSError as e:
            raise SpiceError("dump", f"cannot write to images directory {self.path}: {e.strerror}") from None

    def file(self, name: str) -> str:
        """A file this dump creates directly (pages-N.img, ghost files): removed again on failure."""
        p = os.path.join(self.path, name)
        self.created.append(p)
        return p

    def add(self, name: str, magic: str, msg: Message, extra: Any = None) -> None:
        """Append an entry to image `name` (created on first use, like CRIU's lazy images)."""
        img = self._images.get(name)
        if img is None:
            img = self._images[name] = (magic, [], [])
        img[1].append(msg)
        img[2].append(extra)

    def move_last_before(self, name: str, index: int) -> None:
        """Move the entry added last to image `name` to position `index` (before the entry there)."""
        _, msgs, extras = self._images[name]
        msgs.insert(index, msgs.pop())
        extras.insert(index, extras.pop())

    def add_all(self, name: str, magic: str, msgs: Iterable[Message]) -> None:
        for m in msgs:
            self.add(name, magic, m)

    def has(self, name: str) -> bool:
        return name in self._images

    def entries(self, name: str) -> list[Message]:
        return self._images[name][1] if name in self._images else []

    def commit(self, inventory: Message) -> None:
        """Write every image, then inventory.img, then drop the partial marker."""
        for name, (magic, msgs, extras) in self._images.items():
            self._write(name, codec.make(magic, msgs, extras))
        self._write("inventory.img", codec.make("INVENTORY", [inventory]))
        try:
            os.unlink(os.path.join(self.path, PARTIAL_MARKER))
        except FileNotFoundError:
            pass
        self.committed = True

    def _write(self, name: str, image: codec.Image) -> None:
        p = self.file(name)
        try:
            with open(p, "wb") as f:
                f.write(codec.dumps(image))
        except OSError as e:
            raise SpiceError("dump", f"cannot write {p}: {e.strerror}") from None

    def abort(self, reason: str) -> None:
        """Remove what this dump wrote; leave the marker (with the reason) so nobody restores it."""
        for p in self.created:
            try:
                os.unlink(p)
            except OSError:
                pass
        try:
            self._write_marker(f"spice dump failed: {reason}\n")
        except OSError:
            pass

    def _write_marker(self, text: str) -> None:
        with open(os.path.join(self.path, PARTIAL_MARKER), "w") as f:
            f.write(text)
