# SPDX-License-Identifier: MIT
"""spice restore puts tasks back into their dumped cgroups, as criu restore does by default
(--manage-cgroups soft): real `criu dump` of workloads living in other cgroups (a v1 hierarchy and
cgroup2) -> `spice restore` -> each process is in its cgroups again (created when missing, with
the dumped properties) and continues; modes ignore and none, --cgroup-root, and a failed restore
that leaves neither task nor created cgroup behind."""

from __future__ import annotations

import os
from pathlib import Path

import harness
import pytest
from harness import CGROUP_HIERARCHIES, CgroupDirs, cgroup_of
from spice import SpiceFailed, spice, spice_restore
from test_rpc_pycriu import pycriu, pycriu_restore, spice_criu  # noqa: F401 - fixtures


@pytest.fixture
def cgroups():
    """Test cgroups in the v1 pids hierarchy and in cgroup2 (the test fails if either is missing)."""
    harness.require_cgroup_hierarchies()
    cg = CgroupDirs("restore")
    yield cg
    harness.reap_zombie_children()
    cg.remove()


def _dump_in_cgroups(workload_factory, compat_tmp: Path, cg: CgroupDirs, name: str = "tree"):
    """The workload's root in <top>/a and (tree) its child in <top>/b, a pids.max on <top>/a;
    dumped by real criu (killed), its cgroups then removed."""
    wl = workload_factory(name)
    cg.make("pids", "a")
    (cg.path("pids", "a") / "pids.max").write_text("77")
    for h in CGROUP_HIERARCHIES:
        cg.move(h, wl.pid, "a")
        for child in wl.pids[1:]:
            cg.move(h, child, "b")
    info = harness.dump_workload(wl, compat_tmp / f"cg-{name}")
    cg.remove()
    return info


def _where(cg: CgroupDirs, rel: str) -> dict[str, str]:
    return {"pids": f"/{cg.top}/{rel}", "": f"/{cg.top}/{rel}"}


def test_criu_dump_restored_into_its_cgroups(workload_factory, compat_tmp: Path, cgroups: CgroupDirs) -> None:
    info = _dump_in_cgroups(workload_factory, compat_tmp, cgroups)
    assert (info.images_dir / "cgroup.img").exists()
    pid = spice_restore(info.images_dir)
    try:
        got = cgroup_of(pid)
        assert {h: got[h] for h in ("pids", "")} == _where(cgroups, "a")
        for child in info.pids[1:]:
            got = cgroup_of(child)
            assert {h: got[h] for h in ("pids", "")} == _where(cgroups, "b")
        # created by the restore, so with the dumped properties (soft mode)
        assert (cgroups.path("pids", "a") / "pids.max").read_text().strip() == "77"
        harness.assert_continues(info, pid)
    finally:
        harness.kill_restored(info, pid)


def test_existing_cgroups_keep_their_properties(workload_factory, compat_tmp: Path, cgroups: CgroupDirs) -> None:
    info = _dump_in_cgroups(workload_factory, compat_tmp, cgroups, "counter")
    for h in CGROUP_HIERARCHIES:
        cgroups.make(h, "a")
    (cgroups.path("pids", "a") / "pids.max").write_text("55")
    pid = spice_restore(info.images_dir, "--manage-cgroups=none")
    try:
        assert cgroup_of(pid)["pids"] == f"/{cgroups.top}/a"
        assert (cgroups.path("pids", "a") / "pids.max").read_text().strip() == "55"
        harness.assert_continues(info, pid)
    finally:
        harness.kill_restored(info, pid)


def test_ignore_leaves_tasks_in_the_restorers_cgroups(workload_factory, compat_tmp: Path,
                                                      cgroups: CgroupDirs) -> None:
    info = _dump_in_cgroups(workload_factory, compat_tmp, cgroups, "counter")
    pid = spice_restore(info.images_dir, "--manage-cgroups=ignore")
    try:
        assert cgroup_of(pid) == cgroup_of(os.getpid())
        assert not cgroups.exists()
        harness.assert_continues(info, pid)
    finally:
        harness.kill_restored(info, pid)


def test_cgroup_root_moves_the_dumped_top(workload_factory, compat_tmp: Path, cgroups: CgroupDirs) -> None:
    """--cgroup-root CTL:/PATH (what runc passes): the hierarchy's dumped top directory becomes PATH."""
    info = _dump_in_cgroups(workload_factory, compat_tmp, cgroups, "counter")
    pid = spice_restore(info.images_dir, f"--cgroup-root=pids:/{cgroups.top}/moved")
    try:
        got = cgroup_of(pid)
        assert got["pids"] == f"/{cgroups.top}/moved" and got[""] == f"/{cgroups.top}/a"
        harness.assert_continues(info, pid)
    finally:
        harness.kill_restored(info, pid)


def test_missing_cgroup_in_mode_none_fails_up_front(workload_factory, compat_tmp: Path, cgroups: CgroupDirs) -> None:
    info = _dump_in_cgroups(workload_factory, compat_tmp, cgroups, "counter")
    with pytest.raises(SpiceFailed) as e:
        spice_restore(info.images_dir, "--manage-cgroups=none")
    assert e.value.rc == 1
    assert f"/{cgroups.top}/a does not exist" in e.value.stderr and "Traceback" not in e.value.stderr
    assert not harness.is_running(info.pid) and not cgroups.exists()


@pytest.mark.parametrize("fault", ["restore-cgroups", "restore-resume"])
def test_failed_restore_removes_the_cgroups_it_created(workload_factory, compat_tmp: Path, cgroups: CgroupDirs,
                                                       monkeypatch, fault: str) -> None:
    info = _dump_in_cgroups(workload_factory, compat_tmp, cgroups, "tree")
    monkeypatch.setenv("SPICE_FAULT", fault)
    p = spice("restore", "-D", str(info.images_dir), "-d", "-o", "fail.log", check=False)
    assert p.returncode == 1 and f"injected failure at {fault}" in p.stderr
    assert not any(harness.is_running(q) for q in info.pids)
    assert not cgroups.exists()


def test_unknown_mode_and_full_mode_are_refused(workload_factory, compat_tmp: Path, cgroups: CgroupDirs) -> None:
    info = _dump_in_cgroups(workload_factory, compat_tmp, cgroups, "counter")
    for mode, words in (("bogus", "unknown mode"), ("full", "not supported")):
        p = spice("restore", "-D", str(info.images_dir), "-d", f"--manage-cgroups={mode}", check=False)
        assert p.returncode == 1 and words in p.stderr and "Error (spice/cgroups)" in p.stderr, p.stderr
        assert not harness.is_running(info.pid)


@pytest.mark.parametrize("how", ["default", "manage_cgroups=false", "cg_root"])
def test_rpc_restore_follows_criu_s_cgroup_options(how: str, pycriu, spice_criu: Path,  # noqa: F811
                                                  workload_factory, compat_tmp: Path, cgroups: CgroupDirs) -> None:
    """Over swrk (pycriu, runc): no cgroup option means soft, as in criu; manage_cgroups=false is
    ignore; cg_root entries (runc sends one per hierarchy) rebase the dumped top directory."""
    info = _dump_in_cgroups(workload_factory, compat_tmp, cgroups, "counter")
    kw: dict = {}
    want = _where(cgroups, "a")
    if how == "manage_cgroups=false":
        kw["manage_cgroups"] = False
        want = {h: cgroup_of(os.getpid())[h] for h in want}
    elif how == "cg_root":
        kw["manage_cgroups"] = True
        kw["cg_root"] = [pycriu.rpc.cgroup_root(ctrl="pids", path=f"/{cgroups.top}/runc")]
        want = {"pids": f"/{cgroups.top}/runc", "": f"/{cgroups.top}/a"}
    pid = pycriu_restore(pycriu, spice_criu, info.images_dir, log_file=f"restore-rpc-{how}.log", **kw)
    try:
        got = cgroup_of(pid)
        assert {h: got[h] for h in want} == want
        harness.assert_continues(info, pid)
    finally:
        harness.kill_restored(info, pid)
