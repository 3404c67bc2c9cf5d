# SPDX-License-Identifier: MIT
"""cgroupfs and restore.cgroups: the host's cgroup mounts as hierarchies, --cgroup-root rebasing, finding a
dumped directory's properties (the real restores are in compat-tests/test_restore_cgroups.py)."""

from __future__ import annotations

import pytest

from spice_criu import cgroupfs
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


def test_hierarchies_are_found_as_proc_pid_cgroup_names_them() -> None:
    host = cgroupfs.mounts(MOUNTINFO)
    assert [m[0] for m in host] == ["/sys/fs/cgroup/unified", "/sys/fs/cgroup/systemd", "/sys/fs/cgroup/cpu,cpuacct",
                                    "/sys/fs/cgroup/pids", "/sys/fs/cgroup/cpuset"]
    assert cgroupfs.locate("", "/a", host) == ("/sys/fs/cgroup/unified", "/sys/fs/cgroup/unified/a")
    assert cgroupfs.locate("name=systemd", "/", host) == ("/sys/fs/cgroup/systemd", "/sys/fs/cgroup/systemd")
    assert cgroupfs.locate("cpu,cpuacct", "/a", host)[1] == "/sys/fs/cgroup/cpu,cpuacct/a"
    assert cgroupfs.locate("cpuset", "/", host)[1] == "/sys/fs/cgroup/cpuset"
    # a controller co-mounted with another is found by either name
    assert cgroupfs.locate("cpuacct", "/", host) == ("/sys/fs/cgroup/cpu,cpuacct", "/sys/fs/cgroup/cpu,cpuacct")
    assert not cgroupfs.mounted("memory", host) and cgroupfs.locate("memory", "/", host) is None
    # pids is mounted from its /ctr: only that part of the hierarchy is reachable
    assert cgroupfs.locate("pids", "/ctr/x", host) == ("/sys/fs/cgroup/pids", "/sys/fs/cgroup/pids/x")
    assert cgroupfs.mounted("pids", host) and cgroupfs.locate("pids", "/other", host) is None


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
