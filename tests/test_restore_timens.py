# SPDX-License-Identifier: MIT
"""restore/timens.enter when no time namespace can be made: a tree that shared the dumper's goes
on with the host's clocks (a warning), one that lived in its own is refused by name."""

from __future__ import annotations

import errno
from types import SimpleNamespace

import pytest

from spice_criu.errors import SpiceError
from spice_criu.restore import timens


def _plan(timens_id: int) -> SimpleNamespace:
    ts = SimpleNamespace(tv_sec=100, tv_nsec=5)
    entry = SimpleNamespace(monotonic=ts, boottime=ts)
    return SimpleNamespace(timens_id=timens_id, imgdir=SimpleNamespace(one=lambda name, optional=False: entry))


def _no_unshare(nr: int, *args: int) -> int:
    raise OSError(errno.EPERM, "Operation not permitted")


def test_host_namespace_tree_goes_on_without(monkeypatch) -> None:
    monkeypatch.setattr(timens, "syscall", _no_unshare)
    timens.enter(_plan(0))  # no exception


def test_own_namespace_tree_is_refused(monkeypatch) -> None:
    monkeypatch.setattr(timens, "syscall", _no_unshare)
    with pytest.raises(SpiceError, match="can't create a time namespace: Operation not permitted"):
        timens.enter(_plan(7))
