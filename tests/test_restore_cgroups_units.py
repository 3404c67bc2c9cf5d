# SPDX-License-Identifier: MIT
"""restore.cgroups: the host's cgroup mounts as hierarchies, --cgroup-root rebasing, finding a
dumped directory's properties (the real restores are in compat-tests/test_restore_cgroups.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from spice_criu.errors import SpiceError
from spice_criu.images import codec
from spice_criu.restore import cgroups

MOUNTINFO = """\
25 30 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
31 25 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
32 31 0:27 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
33 31 0:28 / /sys/fs/cgroup/systemd rw,nosuid - cgroup cgroup rw,xattr,name=systemd
36 31 0:31 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct
37 31 0:32 /ctr /sys/fs/cgroup/pids rw,nosuid - cgroup cgroup rw,pids
38 31 0:33 / /sys/fs/cgroup/cpuset rw,nosuid - cgroup cgroup rw,cpuset,clone_children
"""


def test_mounts_name_hierarchies_as_proc_pid_cgroup_does(tmp_path: Path) -> None:
    f = tmp_path / "mountinfo"
    f.write_text(MOUNTINFO)
    assert cgroups.mounts(str(f)) == {
        "": ("/sys/fs/cgroup/unified", "/"),
        "name=systemd": ("/sys/fs/cgroup/systemd", "/"),
        "cpu,cpuacct": ("/sys/fs/cgroup/cpu,cpuacct", "/"),
        "pids": ("/sys/fs/cgroup/pids", "/ctr"),
        "cpuset": ("/sys/fs/cgroup/cpuset", "/"),
    }
    host = cgroups.mounts(str(f))
    # a controller co-mounted with another is found by either name
    assert cgroups._find_mount("cpuacct", host) == ("/sys/fs/cgroup/cpu,cpuacct", "/")
    assert cgroups._find_mount("memory", host) is None


def _entry():
    e = codec.pb("cgroup_entry", lite=True)()
    c = e.controllers.add()
    c.cnames.append("pids")
    top = c.dirs.add()
    top.dir_name = "app/web"
    p = top.properties.add()
    p.name, p.value = "pids.max", "77"
    child = top.children.add()
    child.dir_name = "worker"
    p = child.properties.add()
    p.name, p.value = "pids.max", "5"
    return e


def test_dumped_directories_are_found_by_path() -> None:
    e = _entry()
    assert cgroups._dir_entry(e, "pids", "app/web").properties[0].value == "77"
    assert cgroups._dir_entry(e, "pids", "app/web/worker").properties[0].value == "5"
    assert cgroups._dir_entry(e, "pids", "app") is None
    assert cgroups._dir_entry(e, "memory", "app/web") is None


@pytest.mark.parametrize(("path", "roots", "want"), [
    ("/app/web", [], "/app/web"),
    ("/app/web", ["/new"], "/new"),
    ("/app/web/worker", ["pids:/new"], "/new/worker"),
    ("/app/web/worker", ["memory:/new"], "/app/web/worker"),
    ("/elsewhere", ["/new"], "/new"),
])
def test_cgroup_root_replaces_the_dumped_top_directory(path: str, roots: list[str], want: str) -> None:
    tops = cgroups._top_dirs(_entry())
    assert cgroups._rebase(path, "pids", tops, cgroups._roots(roots)) == want


def test_a_relative_cgroup_root_is_refused() -> None:
    with pytest.raises(SpiceError, match="absolute path"):
        cgroups._roots(["pids:relative"])
