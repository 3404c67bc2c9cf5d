# SPDX-License-Identifier: MIT
"""cgroup.img and the per-thread cg_set ids: `spice dump` writes what real CRIU 4.2.1 writes.

Each test makes its own cgroups (a unique name per test, in the v1 pids hierarchy and the cgroup2
one at least), moves workload processes (or single threads: v1 `tasks`) into them, and removes
them again once every process in them is dead and reaped. The same stopped tree is dumped by real
CRIU and by spice (both --leave-running): every image, cgroup.img included, must decode to the same
thing with real crit (no allowed differences beyond test_dump_compare's own: the cgroup tree and
its property values do not change while the tree is stopped). A tree in spice's own cgroups gets no
cgroup.img, as under CRIU. And spice's images make real CRIU put a restored tree back into its
cgroups, recreating them from cgroup.img (directories and properties) when they are gone.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import harness
import pytest
from harness import CgroupDirs, assert_continues, cgroup_of, criu_restore, kill_restored, require_cgroup_hierarchies
from spice import spice
from test_dump_compare import _decode, compare_dirs, decode_all, dump_both
from test_rpc_pycriu import pycriu, pycriu_dump, spice_criu  # noqa: F401 - fixtures


@contextlib.contextmanager
def cgroups_for(tag: str, *workloads: harness.Workload) -> Iterator[CgroupDirs]:
    cg = CgroupDirs(tag)
    try:
        yield cg
    finally:
        for wl in workloads:
            wl.kill()
        harness.cleanup_dump_infos()
        harness.reap_zombie_children()
        cg.remove()


def threads_of(pid: int) -> list[int]:
    return sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))


def cg_sets(crit: Path, d: Path) -> dict[int, int]:
    """tid -> thread_core.cg_set of every core image of a dump (0: not set)."""
    cores = sorted(d.glob("core-*.img"))
    decode_all(crit, cores)
    return {int(c.stem[5:]): _decode(crit, c)["entries"][0].get("thread_core", {}).get("cg_set", 0) for c in cores}


def root_cg_set(crit: Path, d: Path) -> int:
    return _decode(crit, d / "inventory.img")["entries"][0]["root_cg_set"]


def dump_compare(crit: Path, wl: harness.Workload, base: Path, extra: tuple[str, ...] = ()) -> tuple[Path, Path]:
    """CRIU then spice of the stopped workload; every image agrees (cgroup.img with no allowance)."""
    criu_dir, spice_dir = dump_both(wl.pid, wl.pids, base, stopped=True, criu_extra=extra, spice_extra=extra)
    wl.wait_ticks(3)
    wl.check()
    problems = compare_dirs(crit, criu_dir, spice_dir, running=False)
    assert problems == [], "\n".join(problems)
    assert cg_sets(crit, criu_dir) == cg_sets(crit, spice_dir)
    assert root_cg_set(crit, spice_dir) == root_cg_set(crit, criu_dir) == 1
    return criu_dir, spice_dir


def _walk(dirs: list[dict], parent: str = "") -> Iterator[tuple[str, dict]]:
    for d in dirs:
        p = f"{parent}/{d['dir_name']}" if parent else d["dir_name"]
        yield p, d
        yield from _walk(d.get("children", []), p)


def test_process_in_other_cgroups(workload_factory, crit_bin: Path, compat_tmp: Path) -> None:
    """One process in a v1 pids and a cgroup2 directory of its own: set 2, the same cgroup.img."""
    wl = workload_factory("counter")
    with cgroups_for("one", wl) as cg:
        cg.move("pids", wl.pid)
        cg.move("unified", wl.pid)
        (cg.path("pids") / "pids.max").write_text("4242")
        criu_dir, spice_dir = dump_compare(crit_bin, wl, compat_tmp / "cgroups-one")
        assert cg_sets(crit_bin, spice_dir) == {wl.pid: 2}
        img = _decode(crit_bin, spice_dir / "cgroup.img")["entries"][0]
        (s,) = img["sets"]
        ctls = {c["name"]: c["path"] for c in s["ctls"]}
        assert s["id"] == 2 and ctls["pids"] == ctls[""] == f"/{cg.top}"
        assert [c["name"] for c in s["ctls"]] == sorted(ctls)
        by_name = {",".join(c["cnames"]): c for c in img["controllers"]}
        pids_dirs = dict(_walk(by_name["pids"]["dirs"]))
        props = {p["name"]: p["value"] for p in pids_dirs[cg.top]["properties"]}
        assert props["pids.max"] == "4242" and props["tasks"] == ""
        assert by_name["pids"]["is_threaded"] is True and by_name[""]["is_threaded"] is False


def test_manage_cgroups_ignore_dumps_no_directories(workload_factory, crit_bin: Path, compat_tmp: Path) -> None:
    """--manage-cgroups=ignore: the sets are still written, no hierarchy is walked (as CRIU)."""
    wl = workload_factory("counter")
    with cgroups_for("ignore", wl) as cg:
        cg.move("pids", wl.pid)
        criu_dir, spice_dir = dump_compare(crit_bin, wl, compat_tmp / "cgroups-ignore",
                                           ("--manage-cgroups=ignore",))
        img = _decode(crit_bin, spice_dir / "cgroup.img")["entries"][0]
        assert [s["id"] for s in img["sets"]] == [2]
        assert img["controllers"] and not any(c.get("dirs") for c in img["controllers"])


def test_sibling_cgroups_sharing_a_name_prefix(workload_factory, crit_bin: Path, compat_tmp: Path) -> None:
    """/X and /X0: two heads of the hierarchy (whole path components decide what is below what)."""
    wl = workload_factory("tree")
    with cgroups_for("prefix", wl) as cg:
        other = CgroupDirs("prefix")
        other.top = cg.top + "0"
        try:
            parent, child1, _ = wl.pids
            cg.move("pids", parent)
            other.move("pids", child1)
            criu_dir, spice_dir = dump_compare(crit_bin, wl, compat_tmp / "cgroups-prefix")
            img = _decode(crit_bin, spice_dir / "cgroup.img")["entries"][0]
            pids_ctl = next(c for c in img["controllers"] if c["cnames"] == ["pids"])
            assert [d["dir_name"] for d in pids_ctl["dirs"]] == [cg.top, other.top]
        finally:
            wl.kill()
            other.remove()


def test_tree_split_over_cgroups(workload_factory, crit_bin: Path, compat_tmp: Path) -> None:
    """A tree over three sets: the parent in its own cgroups, one child in a cgroup below the
    parent's, the other child left in spice's (and CRIU's) own cgroups (cg_set 1)."""
    wl = workload_factory("tree")
    with cgroups_for("tree", wl) as cg:
        parent, child1, child2 = wl.pids
        cg.move("pids", parent)
        cg.move("unified", parent)
        cg.move("pids", child1, "sub")
        criu_dir, spice_dir = dump_compare(crit_bin, wl, compat_tmp / "cgroups-tree")
        sets = cg_sets(crit_bin, spice_dir)
        assert sets[parent] == 2 and sets[child1] == 3 and sets[child2] == 1
        img = _decode(crit_bin, spice_dir / "cgroup.img")["entries"][0]
        assert [s["id"] for s in img["sets"]] == [2, 3]
        pids_ctl = next(c for c in img["controllers"] if c["cnames"] == ["pids"])
        assert [p for p, _ in _walk(pids_ctl["dirs"])] == [cg.top, f"{cg.top}/sub"]


def test_root_in_own_cgroups_child_elsewhere(workload_factory, crit_bin: Path, compat_tmp: Path) -> None:
    """The root in spice's own set, a child elsewhere: cgroup.img lists only the child's set."""
    wl = workload_factory("tree")
    with cgroups_for("mixed", wl) as cg:
        parent, child1, _ = wl.pids
        cg.move("pids", child1)
        cg.move("unified", child1)
        criu_dir, spice_dir = dump_compare(crit_bin, wl, compat_tmp / "cgroups-mixed")
        sets = cg_sets(crit_bin, spice_dir)
        assert sets[parent] == 1 and sets[child1] == 2
        img = _decode(crit_bin, spice_dir / "cgroup.img")["entries"][0]
        assert [s["id"] for s in img["sets"]] == [2]


def test_thread_in_other_cgroup(workload_factory, crit_bin: Path, compat_tmp: Path) -> None:
    """v1 puts threads one by one: a thread outside its process's cgroup has a set of its own."""
    wl = workload_factory("threads")
    with cgroups_for("thread", wl) as cg:
        tids = threads_of(wl.pid)
        cg.move("pids", wl.pid)
        cg.move("pids", tids[-1], "t", thread=True)
        assert cgroup_of(wl.pid, tids[-1])["pids"] == f"/{cg.top}/t"
        criu_dir, spice_dir = dump_compare(crit_bin, wl, compat_tmp / "cgroups-thread")
        sets = cg_sets(crit_bin, spice_dir)
        assert sets[wl.pid] == 2 and sets[tids[-1]] == 3
        assert {sets[t] for t in tids[1:-1]} == {2}


def test_own_cgroups_no_cgroup_img(workload_factory, crit_bin: Path, compat_tmp: Path) -> None:
    """A tree in spice's own cgroups: no cgroup.img, every thread in set 1, as CRIU."""
    wl = workload_factory("tree")
    assert all(cgroup_of(p) == cgroup_of(os.getpid()) for p in wl.pids)
    criu_dir, spice_dir = dump_compare(crit_bin, wl, compat_tmp / "cgroups-own")
    for d in (criu_dir, spice_dir):
        assert not (d / "cgroup.img").exists()
        sets = cg_sets(crit_bin, d)
        assert set(sets) >= set(wl.pids) and set(sets.values()) == {1}


def _spice_dumper(pid: int, images: Path, leave_running: bool) -> None:
    images.mkdir(parents=True, exist_ok=True)
    spice("dump", "-t", str(pid), "-D", str(images), "-v4", "-o", "dump.log",
          *(["--leave-running"] if leave_running else []), log=images / "dump.log")


def test_criu_restores_spice_dump_into_its_cgroups(workload_factory, crit_bin: Path, compat_tmp: Path,
                                                   criu_bin: Path) -> None:
    """spice dump of a tree in other cgroups -> the cgroups are removed -> real `criu restore -d`
    recreates them from cgroup.img (with the dumped pids.max) and puts each process back."""
    wl = workload_factory("tree")
    with cgroups_for("restore", wl) as cg:
        parent, child1, child2 = wl.pids
        cg.move("pids", parent)
        cg.move("unified", parent)
        cg.move("pids", child1, "sub")
        cg.move("pids", child2)  # CRIU 4.2.1 cannot restore a child in its own set 1 below a parent
        cg.move("unified", child2)  # elsewhere ("No set 1 found"): every process leaves set 1
        (cg.path("pids", "sub") / "pids.max").write_text("77")
        info = harness.dump_workload(wl, compat_tmp / "cgroups-restore" / "images", dumper=_spice_dumper)
        assert (info.images_dir / "cgroup.img").exists()
        harness.reap(info.pids)
        cg.remove()  # CRIU must create them again, from the image (removed again at the end)
        assert not cg.exists()
        pid = criu_restore(info.images_dir)
        try:
            assert pid == parent
            assert_continues(info, pid)
            assert cgroup_of(parent)["pids"] == f"/{cg.top}" and cgroup_of(parent)[""] == f"/{cg.top}"
            assert cgroup_of(child1)["pids"] == f"/{cg.top}/sub"
            assert cgroup_of(child1)[""] == cgroup_of(os.getpid())[""]  # not moved there: set 3
            assert cgroup_of(child2) == cgroup_of(parent)  # the parent's set 2
            assert (cg.path("pids", "sub") / "pids.max").read_text().strip() == "77"
        finally:
            kill_restored(info, pid)


@pytest.fixture(autouse=True)
def _cgroup_hierarchies() -> None:
    require_cgroup_hierarchies()


@pytest.mark.parametrize("manage", [None, False])
def test_rpc_dump_follows_manage_cgroups(manage: bool | None, pycriu, spice_criu: Path,  # noqa: F811
                                         workload_factory, crit_bin: Path) -> None:
    """Over swrk, as in criu: no cgroup option walks the hierarchies, manage_cgroups=false (ignore)
    writes the sets without directories."""
    wl = workload_factory("counter")
    with cgroups_for("rpc", wl) as cg:
        cg.move("pids", wl.pid)
        images = wl.rundir / f"rpc-{manage}"
        kw = {} if manage is None else {"manage_cgroups": manage}
        pycriu_dump(pycriu, spice_criu, wl.pid, images, leave_running=True, **kw)
        img = _decode(crit_bin, images / "cgroup.img")["entries"][0]
        assert [s["id"] for s in img["sets"]] == [2]
        walked = any(c.get("dirs") for c in img["controllers"])
        assert walked == (manage is None), img["controllers"]
        wl.wait_ticks(2)  # left running, unharmed
