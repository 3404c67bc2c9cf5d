# SPDX-License-Identifier: MIT
"""The restore path without protobuf: spice_criu.images.lite on real CRIU 4.2.1 images.

- every image of the real dumps (the five workloads, killing and --leave-running, and the "zoo" of
  nearly every image kind, see test_crit_compat.py) decodes with lite exactly as with protobuf:
  same entries, values, presence, defaults, payloads;
- a real `spice restore` of each workload's real CRIU dump, run under `python -X importtime`,
  imports no google.protobuf module at all (nor slow standard modules it has no use for), and the
  restored process provably continues; the
  stats-restore it writes without protobuf is byte for byte what protobuf re-encodes.
"""

from __future__ import annotations

import importlib
import subprocess
from pathlib import Path

import harness
import pytest
from harness import DumpInfo, assert_continues, kill_restored
from spice import SLOW_STDLIB, spice_importtime

from spice_criu.images import codec, magic

REPO = Path(__file__).resolve().parent.parent


assert_same = harness.unit_test_module("test_lite").assert_same


def _images(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_file() and magic.magic_for_filename(p.name) not in (None, "RAW"))


def _extras_equal(a, b) -> bool:
    if isinstance(a, list) and a and isinstance(a[0], tuple) and hasattr(a[0][0], "DESCRIPTOR"):  # ipc msgs
        for (pm, pd), (lm, ld) in zip(a, b, strict=True):
            assert_same(pm, lm)
            assert pd == ld
        return len(a) == len(b)
    return a == b


def _compare_dir(d: Path) -> int:
    n = 0
    for p in _images(d):
        data = p.read_bytes()
        ref = codec.loads(data, p)
        ours = codec.loads(data, p, lite=True)
        assert ours.magic == ref.magic
        assert len(ours.entries) == len(ref.entries), p
        for i, (a, b) in enumerate(zip(ref.entries, ours.entries, strict=True)):
            try:
                assert_same(a.msg, b.msg)
            except AssertionError as e:
                raise AssertionError(f"{p.name} entry {i}: {e}") from None
            assert _extras_equal(a.extra, b.extra), f"{p.name} entry {i}: payloads differ"
        n += 1
    return n


@pytest.mark.parametrize("leave_running", [False, True], ids=["kill", "leave-running"])
def test_lite_decodes_real_criu_images_like_protobuf(workload_name: str, leave_running: bool, criu_dumps,
                                                     criu_dumps_leave_running) -> None:
    info = (criu_dumps_leave_running if leave_running else criu_dumps)[workload_name]
    assert _compare_dir(info.images_dir) >= 10


def test_lite_decodes_the_zoo_like_protobuf(criu_bin: Path, compat_tmp: Path) -> None:
    zoo = importlib.import_module("test_crit_compat").dump_zoo(compat_tmp / "lite-zoo", criu_bin)
    kinds = {codec.loads(p.read_bytes(), p).magic for p in _images(zoo)}
    # the zoo's point: far more than a plain task's images
    assert {"TCP_STREAM", "SK_QUEUES", "PIPES_DATA", "FIFO_DATA", "IPCNS_MSG", "IPCNS_SEM", "GHOST_FILE",
            "FILE_LOCKS", "UTSNS", "FILES"} <= kinds, sorted(kinds)
    assert _compare_dir(zoo) >= 20


def _restore_with_importtime(images: Path, log: str, pidfile: Path) -> tuple[subprocess.CompletedProcess[str],
                                                                              list[str]]:
    pidfile.unlink(missing_ok=True)
    return spice_importtime("restore", "-D", str(images), "-d", "-v4", "-o", log, "--pidfile", str(pidfile),
                            "--backend", "ptrace")


def test_spice_restore_imports_no_protobuf(workload_name: str, criu_dumps: dict[str, DumpInfo]) -> None:
    info = criu_dumps[workload_name]
    pidfile = info.images_dir / "lite-restore.pid"
    p, imported = _restore_with_importtime(info.images_dir, "lite-restore.log", pidfile)
    assert p.returncode == 0, (p.stdout, p.stderr[-3000:], harness.log_tail(info.images_dir / "lite-restore.log"))
    assert "spice_criu.restore.run" in imported and "spice_criu.images.lite" in imported  # really measured
    assert [m for m in imported if "google" in m or m.endswith("_pb2")] == []
    assert sorted(SLOW_STDLIB.intersection(imported)) == []
    pid = int(pidfile.read_text())
    assert pid == info.pid
    try:
        assert_continues(info, pid)
    finally:
        kill_restored(info, pid)
    # stats-restore was written without protobuf: protobuf reads it and re-encodes the same bytes
    raw = (info.images_dir / "stats-restore").read_bytes()
    img = codec.loads(raw, "stats-restore", "STATS")
    assert img.entries[0].msg.restore.IsInitialized() and img.entries[0].msg.restore.restore_time > 0
    assert codec.dumps(img) == raw
