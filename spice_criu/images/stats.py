# SPDX-License-Identifier: MIT
"""stats-dump / stats-restore: the service images podman, zdtm and `--display-stats` read."""

from __future__ import annotations

from pathlib import Path

from . import codec

DUMP_LABELS = [
    ("freezing_time", "Freezing time", "us"),
    ("frozen_time", "Frozen time", "us"),
    ("memdump_time", "Memory dump time", "us"),
    ("memwrite_time", "Memory write time", "us"),
    ("irmap_resolve", "IRMAP resolve time", "us"),
    ("pages_scanned", "Memory pages scanned", ""),
    ("pages_skipped_parent", "Memory pages skipped from parent", ""),
    ("pages_written", "Memory pages written", ""),
    ("pages_lazy", "Lazy memory pages", ""),
]
RESTORE_LABELS = [
    ("pages_compared", "Pages compared", ""),
    ("pages_skipped_cow", "Pages skipped COW", ""),
    ("pages_restored", "Pages restored", ""),
    ("restore_time", "Restore time", "us"),
    ("forking_time", "Forking time", "us"),
]


def write(workdir: Path, kind: str, **fields: int) -> Path:
    """Write stats-<kind> ("dump" or "restore") into the work dir, CRIU's layout."""
    stats = codec.entry_class("STATS")()
    sub = stats.dump if kind == "dump" else stats.restore
    sub.SetInParent()
    for k, v in fields.items():
        setattr(sub, k, int(v))
    for f in sub.DESCRIPTOR.fields:  # required fields CRIU always writes
        if f.is_required and not sub.HasField(f.name):
            setattr(sub, f.name, 0)
    path = Path(workdir) / f"stats-{kind}"
    codec.dump(path, codec.make("STATS", [stats]))
    return path


def read(path: Path):
    return codec.load(path, expect="STATS").entries[0].msg


def display(kind: str, stats) -> str:
    """The lines criu --display-stats prints."""
    sub = stats.dump if kind == "dump" else stats.restore
    labels = DUMP_LABELS if kind == "dump" else RESTORE_LABELS
    lines = ["Displaying dump stats:" if kind == "dump" else "Displaying restore stats:"]
    for field, label, unit in labels:
        if sub.HasField(field):
            v = getattr(sub, field)
            lines.append(f"{label}: {v} us" if unit else f"{label}: {v} (0x{v:x})")
    return "\n".join(lines) + "\n"
