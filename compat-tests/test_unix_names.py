# SPDX-License-Identifier: MIT
"""Unix sockets bound to names in the filesystem (servers on a socket file), both directions:
real `criu dump` -> `spice restore`, `spice dump` -> real `criu restore` / `spice restore`, and
`spice dump` writing the names as criu does. The dumped process's socket files are left behind
when it dies; a restore must rebind over them (criu unlinks them first), keep the file's mode, bind a
relative name in its directory, and keep a socket whose file was deleted without a file."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import fdkinds
import harness
import pytest
from harness import assert_continues

USK_FIELDS = ("name", "name_dir", "file_perms", "deleted", "state", "type", "backlog")


def check_restored(info: harness.DumpInfo, pid: int) -> None:
    assert pid == info.pid
    assert_continues(info, pid, new_ticks=3)
    run = info.rundir
    st = os.stat(run / "srv.sock")
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640, oct(st.st_mode)
    assert not (run / "gone.sock").exists()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
        c.settimeout(harness.scaled(5))
        c.connect(str(run / "srv.sock"))
        reply = c.makefile().readline()
    assert reply.startswith(f"token={info.pre_dump['main'].fields['token']} "), reply
    before = fdkinds.last_field(info, "dgrams")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as d:
        for _ in range(3):
            d.sendto(b"ping", str(run / "rel.sock"))
    fdkinds.wait_for(lambda: fdkinds.last_field(info, "dgrams") == before + 3, 10, "3 datagrams counted")


criu_dump, spice_dump = fdkinds.dump_fixtures("unixnames")


def named_sockets(crit: Path, images: Path) -> dict[str, dict]:
    usks = fdkinds.crit_files(crit, images, "UNIXSK", "usk")
    return {u["name"]: {k: u.get(k) for k in USK_FIELDS} for u in usks if u.get("name")}


def test_criu_dump_restores_under_spice(criu_dump: harness.DumpInfo, crit_bin: Path) -> None:
    names = named_sockets(crit_bin, criu_dump.images_dir)
    assert {os.path.basename(n) for n in names} == {"srv.sock=00", "rel.sock=00", "gone.sock=00"}, names
    assert (criu_dump.rundir / "srv.sock").exists()  # left behind by the dumped process
    fdkinds.restore_and_check(criu_dump, "spice", check_restored, times=2)


def test_spice_dump_writes_names_as_criu(crit_bin: Path, compat_tmp: Path) -> None:
    with fdkinds.dumped_by_both("unixnames", compat_tmp / "unix-names" / "both") as (wl, theirs, ours):
        a = named_sockets(crit_bin, theirs)
        assert a == named_sockets(crit_bin, ours)
        assert a[f"{wl.rundir}/srv.sock=00"]["file_perms"]["mode"] == stat.S_IFSOCK | 0o640
        assert a["rel.sock=00"]["name_dir"] == str(wl.rundir)
        assert a["gone.sock=00"]["deleted"] is True


@pytest.mark.parametrize("tool", ["criu", "spice"])
def test_spice_dump_restores(spice_dump: harness.DumpInfo, tool: str) -> None:
    fdkinds.restore_and_check(spice_dump, tool, check_restored)
