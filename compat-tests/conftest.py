# SPDX-License-Identifier: MIT
"""Session fixtures of the compat tests: real CRIU 4.2.x and real dumps of the five workloads.

Fixtures (all built on ``harness.py``; import helpers from there: ``from harness import ...``):

``criu_bin`` (session) -> pathlib.Path
    Real CRIU >= 4.2 (``$CRIU4_BINDIR/criu``, default /usr/local/sbin/criu). Runs
    compat-tests/install-criu.sh first (idempotent); if CRIU is still missing the test FAILS.
``crit_bin`` (session) -> pathlib.Path
    The matching crit (``$CRIU4_BINDIR/crit``), same rules.
``compat_tmp`` (session) -> pathlib.Path
    The session's scratch dir, ``$SPICE_COMPAT_TMP/spice-compat-XXXX`` (default base: the system
    temp dir). Every process still running there is killed at the end and the dir is deleted
    unless ``SPICE_KEEP=1``.
``criu_dumps`` (session) -> dict[str, harness.DumpInfo]
    One real ``criu dump`` (killing) of each of ``harness.WORKLOADS`` =
    ``["counter", "threads", "tree", "pyholder", "httpd"]``, made once per session. A workload whose
    dump failed raises its error when looked up (the other workloads are unaffected).
``criu_dumps_leave_running`` (session) -> dict[str, harness.DumpInfo]
    The same with ``--leave-running``; the original is killed and reaped right after its dump.
``workload_name`` -> str
    Parametrized over ``harness.WORKLOADS``.
``workload_factory`` -> callable(name, **kw) -> harness.Workload
    Starts a fresh workload in its own dir under compat_tmp (``harness.start_workload``); every
    workload it started is killed and reaped at the end of the test.

``harness.DumpInfo`` fields: name, images_dir, rundir, out_file (out_files), log_file, pids (original
pids, root first; pid = root), roles (role -> pid), last_ticks / last_ticks_max (role -> last tick
before the freeze; equal for a killing dump), last_tick (root role), pre_dump (role -> harness.Line,
the last pre-dump line), leave_running, port (httpd), dump (harness.CriuResult), resume_offset.

A test restores a DumpInfo any number of times, one instance at a time::

    info = criu_dumps[workload_name]
    pid = criu_restore(info.images_dir)          # or spice restore -D info.images_dir ...
    assert_continues(info, pid)                  # new ticks follow the dump point, same state
    kill_restored(info, pid)                     # kill + reap the tree, ready for the next restore

After every test, leftovers of restored instances of these dumps are killed and reaped, and zombie
children reaped, so a failing test cannot break the next one. The pytest process is made a child
subreaper, so restored tasks (criu -d, spice) become its children.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import harness
import pytest

# The kmod backend's tests need /dev/spice, which exists only inside the qemu guest that
# `make kmod-test` boots (the host cannot load modules): they are collected there, never here.
if os.environ.get("SPICE_KMOD_GUEST") != "1":
    collect_ignore = ["test_kmod_restore.py"]


class DumpSet(dict[str, harness.DumpInfo]):
    """name -> DumpInfo; a workload whose dump failed raises that failure when looked up."""

    def __init__(self) -> None:
        super().__init__()
        self.errors: dict[str, str] = {}

    def __missing__(self, name: str) -> harness.DumpInfo:
        if name in self.errors:
            raise RuntimeError(f"the session dump of {name} failed:\n{self.errors[name]}")
        raise KeyError(name)


@pytest.fixture(scope="session", autouse=True)
def _subreaper() -> Iterator[None]:
    harness.make_subreaper()
    yield
    harness.reap_zombie_children()


@pytest.fixture(autouse=True)
def _isolate_restores() -> Iterator[None]:
    yield
    harness.cleanup_dump_infos()
    harness.reap_zombie_children()


@pytest.fixture(scope="session")
def criu_bin() -> Path:
    try:
        return harness.ensure_criu()
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture(scope="session")
def crit_bin(criu_bin: Path) -> Path:
    if not harness.CRIT_BIN.exists():
        pytest.fail(f"crit missing at {harness.CRIT_BIN}", pytrace=False)
    return harness.CRIT_BIN


@pytest.fixture(scope="session")
def compat_tmp() -> Iterator[Path]:
    d = harness.new_session_dir()
    yield d
    harness.remove_session_dir(d)


def _dump_all(base: Path, leave_running: bool, criu: Path) -> DumpSet:
    dumps = DumpSet()
    started: dict[str, harness.Workload] = {}
    for name in harness.WORKLOADS:  # start them all, then wait: they warm up in parallel
        try:
            started[name] = harness.start_workload(name, base / name, wait=False)
        except Exception as e:  # noqa: BLE001 - reported when the workload is looked up
            dumps.errors[name] = f"start: {e}"
    for name, wl in started.items():
        try:
            wl.wait_ticks(3, since=wl.start_offset)
            dumps[name] = harness.dump_workload(wl, wl.rundir / "images", leave_running=leave_running,
                                                dumper=lambda pid, d, lr: harness.criu_dump(pid, d, lr, criu=criu))
        except Exception as e:  # noqa: BLE001
            dumps.errors[name] = f"{type(e).__name__}: {e}"
            wl.kill()
    return dumps


@pytest.fixture(scope="session")
def criu_dumps(criu_bin: Path, compat_tmp: Path) -> DumpSet:
    return _dump_all(compat_tmp / "criu-dumps", leave_running=False, criu=criu_bin)


@pytest.fixture(scope="session")
def criu_dumps_leave_running(criu_bin: Path, compat_tmp: Path) -> DumpSet:
    return _dump_all(compat_tmp / "criu-dumps-leave-running", leave_running=True, criu=criu_bin)


@pytest.fixture(params=harness.WORKLOADS)
def workload_name(request: pytest.FixtureRequest) -> str:
    return request.param


_factory_ids = itertools.count(1)


@pytest.fixture
def workload_factory(compat_tmp: Path) -> Iterator[Callable[..., harness.Workload]]:
    started: list[harness.Workload] = []

    def start(name: str, **kw: object) -> harness.Workload:
        rundir = compat_tmp / "workloads" / f"{name}-{next(_factory_ids)}"
        wl = harness.start_workload(name, rundir, **kw)  # type: ignore[arg-type]
        started.append(wl)
        return wl

    yield start
    for wl in started:
        wl.kill()
