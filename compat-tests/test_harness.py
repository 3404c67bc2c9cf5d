# SPDX-License-Identifier: MIT
"""The test bed proves itself against real CRIU: every workload survives real dump + real restore
under assert_continues, dumps restore many times, and the checker fails on whatever does not
continue (a dead restore, a fresh process posing as a restored one, doctored output)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path

import harness
import pytest
from harness import (
    DumpInfo,
    Line,
    assert_continues,
    check_continuation,
    criu_dump,
    criu_restore,
    kill_pids,
    kill_restored,
    process_state,
    read_lines,
)


def test_real_criu_and_crit(criu_bin: Path, crit_bin: Path, criu_dumps: dict[str, DumpInfo]) -> None:
    version = harness.criu_version(criu_bin)
    assert version is not None and version >= (4, 2), version
    inv = criu_dumps["counter"].images_dir / "inventory.img"
    shown = json.loads(subprocess.run([str(crit_bin), "show", str(inv)], capture_output=True, text=True,
                                      check=True).stdout)
    assert shown["magic"] == "INVENTORY"
    assert shown["entries"][0]["img_version"] == 2


def test_criu_dump_restore_continues(workload_name: str, criu_dumps: dict[str, DumpInfo]) -> None:
    info = criu_dumps[workload_name]
    assert not info.leave_running and info.last_ticks == info.last_ticks_max
    assert all(process_state(p) is None for p in info.pids), "the dump must have killed and reaped the tree"
    pid = criu_restore(info.images_dir)
    assert pid == info.pid
    cont = assert_continues(info, pid)
    assert cont.first_tick == {r: t + 1 for r, t in info.last_ticks.items()}
    assert cont.pids == info.roles
    kill_restored(info, pid)
    assert all(process_state(p) is None for p in info.pids), "killed restored tasks must be reaped"


def test_leave_running_dump_restores_three_times(workload_name: str,
                                                 criu_dumps_leave_running: dict[str, DumpInfo]) -> None:
    info = criu_dumps_leave_running[workload_name]
    assert info.leave_running
    for _ in range(3):
        pid = criu_restore(info.images_dir)
        cont = assert_continues(info, pid)
        assert all(info.last_ticks[r] < t <= info.last_ticks_max[r] + 1 for r, t in cont.first_tick.items())
        kill_restored(info, pid)
    assert len(list(info.images_dir.glob("restore-*.log"))) >= 3


def test_restore_not_detached(criu_dumps: dict[str, DumpInfo]) -> None:
    """criu restore without -d: criu stays the tree's parent and is reaped with it."""
    info = criu_dumps["tree"]
    pid = criu_restore(info.images_dir, detached=False)
    assert_continues(info, pid)
    kill_restored(info, pid)
    assert not harness._popens, "the background criu was not reaped"


def test_leave_running_dump_keeps_workload_running(workload_factory, tmp_path: Path) -> None:
    """assert_continues on a Workload: it kept going through a --leave-running dump."""
    wl = workload_factory("threads")
    criu_dump(wl.pid, tmp_path / "img", leave_running=True)
    cont = assert_continues(wl)
    assert cont.first_tick == {"main": 1}
    wl.kill()
    assert process_state(wl.pid) is None


# ---- the checker must fail on what does not continue -------------------------------------------


def test_fails_on_restored_process_that_died(criu_dumps: dict[str, DumpInfo]) -> None:
    info = criu_dumps["counter"]
    pid = criu_restore(info.images_dir)
    kill_pids([pid])
    with pytest.raises(AssertionError, match=rf"pid {pid} is gone"):
        assert_continues(info, pid)
    kill_restored(info)


def test_fails_on_fresh_process_posing_as_restored(criu_dumps: dict[str, DumpInfo], workload_factory) -> None:
    """A new counter appending to the dumped one's output: alive and ticking, but not continuing."""
    info = criu_dumps["counter"]
    fresh = workload_factory("counter", out_file=info.out_file)
    with pytest.raises(AssertionError, match=r"first tick after the restore is \d+, expected"):
        assert_continues(info, fresh.pid, same_pids=False)
    fresh.kill()
    info.mark()


def test_fails_on_other_workloads_process(criu_dumps: dict[str, DumpInfo]) -> None:
    counter, threads = criu_dumps["counter"], criu_dumps["threads"]
    pid = criu_restore(counter.images_dir)
    with pytest.raises(AssertionError, match=r"new lines per role"):
        assert_continues(threads, pid, timeout=1.0)
    kill_restored(counter, pid)


def test_fails_when_httpd_answers_with_other_state(criu_dumps: dict[str, DumpInfo], workload_factory) -> None:
    """The restored httpd ticks correctly, but the server on the port checked is another one."""
    info = criu_dumps["httpd"]
    impostor = workload_factory("httpd")
    pid = criu_restore(info.images_dir)
    with pytest.raises(AssertionError, match=r"GET answered token="):
        assert_continues(dataclasses.replace(info, port=impostor.port), pid)
    assert_continues(info, pid)
    kill_restored(info, pid)


def _restored_lines(info: DumpInfo) -> list[Line]:
    pid = criu_restore(info.images_dir)
    assert_continues(info, pid, new_ticks=4)
    lines = read_lines(info.out_file, info.resume_offset)[0]
    kill_restored(info, pid)
    check_continuation(info, lines)  # the untouched lines pass
    return lines


def _edit(line: Line, **fields: str) -> Line:
    new = {**line.fields, **fields}
    text = " ".join(f"{k}={v}" for k, v in new.items())
    return harness.parse_line(line.offset, text)


DOCTORED = {
    # name: (workload, edit(lines) -> lines, expected message)
    "tick gap": ("counter", lambda ls: ls[:1] + ls[2:], r"tick \d+ follows tick \d+"),
    "late start": ("counter", lambda ls: ls[1:], r"first tick after the restore is \d+, expected"),
    "memory checksum": ("counter", lambda ls: [ls[0], _edit(ls[1], anon="0" * 16), *ls[2:]],
                        r"anon=0+, before the dump anon="),
    "file position": ("counter", lambda ls: [ls[0], _edit(ls[1], fpos="1"), *ls[2:]], r"fpos=1 does not follow"),
    "token": ("pyholder", lambda ls: [_edit(ls[0], token="1" * 16), *ls[1:]], r"token=1+, before the dump"),
    "python data": ("pyholder", lambda ls: [*ls[:-1], _edit(ls[-1], data="deadbeef")], r"data=deadbeef"),
    "stuck thread": ("threads", lambda ls: [_edit(ln, c3=ls[0].fields["c3"]) for ln in ls], r"c3 stuck"),
    "thread back": ("threads", lambda ls: [ls[0], _edit(ls[1], c2="0"), *ls[2:]], r"c2 went back"),
    "lost child": ("tree", lambda ls: [ln for ln in ls if ln.role != "child2"], r"no line from 'child2'"),
    "pipe seq": ("tree", lambda ls: [_edit(ln, seq=str(int(ln.fields["seq"]) + 1)) if ln.role == "child1" else ln
                                     for ln in ls], r"seq=\d+ does not follow"),
    "FAIL line": ("httpd", lambda ls: [*ls, harness.parse_line(ls[-1].offset + 1, "FAIL role=main pid=1 boom")],
                  r"reported: FAIL role=main pid=1 boom"),
    "other pid": ("httpd", lambda ls: [_edit(ln, pid="1") for ln in ls], r"differ from the original"),
}


@pytest.mark.parametrize("case", list(DOCTORED))
def test_fails_on_doctored_output(case: str, criu_dumps: dict[str, DumpInfo]) -> None:
    name, edit, message = DOCTORED[case]
    info = criu_dumps[name]
    lines = _restored_lines(info)
    with pytest.raises(AssertionError, match=message):
        check_continuation(info, edit(lines))


def test_fails_when_the_freeze_window_is_wrong(criu_dumps: dict[str, DumpInfo]) -> None:
    """The same lines checked against a dump point one tick later must fail (no slack)."""
    info = criu_dumps["threads"]
    lines = _restored_lines(info)
    shifted = dataclasses.replace(info, last_ticks={"main": info.last_tick + 1},
                                  last_ticks_max={"main": info.last_tick + 1})
    with pytest.raises(AssertionError, match=r"expected \d+"):
        check_continuation(shifted, lines)
