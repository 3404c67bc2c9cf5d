# SPDX-License-Identifier: MIT
"""The kernel-module backend: one SPICE_IOC_RESTORE call on /dev/spice installs a task's memory
(from the page cache of pages-N.img, working set prefaulted), sigactions and CPU state."""

from __future__ import annotations

import os

DEVICE = "/dev/spice"


def unavailable_reason() -> str:
    if not os.path.exists(DEVICE):
        return f"{DEVICE} does not exist (module not loaded)"
    return "the kmod backend is not wired up yet"


def available() -> bool:
    return False
