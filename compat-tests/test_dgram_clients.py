# SPDX-License-Identifier: MIT
"""A datagram client connected one way to a bound unix socket (syslog() to /dev/log), both
directions: real `criu dump` -> `spice restore` (spice reconnects the client to the server's name,
binding the server first when the client's task comes first), `spice dump` -> real `criu restore`
(spice writes the server before its clients in files.img, as criu does: criu's restore resolves a
peer only among the sockets read before it) and -> `spice restore`. After each restore the client's
messages still reach the server: both counters go on."""

from __future__ import annotations

import fdkinds
import harness
import pytest
from harness import assert_continues


def check_restored(info: harness.DumpInfo, pid: int) -> None:
    assert pid == info.pid
    assert_continues(info, list(info.pids), new_ticks=3)
    got = fdkinds.last_field(info, "got", "child")
    fdkinds.wait_for(lambda: fdkinds.last_field(info, "got", "child") >= got + 3, 10,
                     "the restored server to receive the restored client's messages")


criu_dump, spice_dump = fdkinds.dump_fixtures("dgramlog")


def test_criu_dump_restores_under_spice(criu_dump: harness.DumpInfo) -> None:
    fdkinds.restore_and_check(criu_dump, "spice", check_restored, times=2)


@pytest.mark.parametrize("tool", ["criu", "spice"])
def test_spice_dump_restores(spice_dump: harness.DumpInfo, tool: str) -> None:
    fdkinds.restore_and_check(spice_dump, tool, check_restored)
