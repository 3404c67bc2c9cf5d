# SPDX-License-Identifier: MIT
"""Fault injection for tests (like CRIU's CRIU_FAULT): SPICE_FAULT=<point>[,<point>...] makes the
named point fail, so tests can prove that a failure at that step cleans up after itself."""

from __future__ import annotations

import os

from .errors import SpiceError

_ACTIVE = frozenset(p for p in os.environ.get("SPICE_FAULT", "").split(",") if p)


def fault_point(name: str) -> None:
    if name in _ACTIVE:
        raise SpiceError("fault", f"injected failure at {name}")
