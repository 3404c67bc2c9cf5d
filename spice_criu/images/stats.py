# SPDX-License-Identifier: MIT
"""stats-dump / stats-restore: the service images podman, zdtm and `--display-stats` read.

Written and read with spice_criu.images.lite messages (protobuf's exact bytes, without importing it):
the restore writes stats-restore and must not pay for protobuf.
"""

from __future__ import annotations

import os

from . import codec, lite

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


def write(workdir: str | os.PathLike, kind: str, **fields: int) -> str:
    """Write stats-<kind> ("dump" or "restore") into the work dir, CRIU's layout."""
    sub = lite.message_class("dump_stats_entry" if kind == "dump" else "restore_stats_entry")(
        **{k: int(v) for k, v in fields.items()})
    for name in lite.required_fields(sub):  # required fields CRIU always writes
        if not sub.HasField(name):
            setattr(sub, name, 0)
    stats = lite.message_class("stats_entry")(**{"dump" if kind == "dump" else "restore": sub})
    path = os.path.join(workdir, f"stats-{kind}")
    codec.dump(path, codec.make("STATS", [stats]))
    return path


def read(path: str | os.PathLike):
    return codec.load(path, expect="STATS", lite=True).entries[0].msg


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
