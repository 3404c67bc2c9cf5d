# SPDX-License-Identifier: MIT
"""`criu swrk` serves DUMP and RESTORE without protobuf: real pycriu (CRIU 4.2.1's client) drives
spice installed as `criu` (make install-criu-shim), started under `python -X importtime`; neither
request imports a google.* or *_pb2 module (requests and replies are spice_criu.images.lite
messages), and the dumped-then-restored workload provably continues as this test's own child."""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import harness
import pytest
from test_rpc_pycriu import install_criu_shim, load_pycriu, pycriu_dump, pycriu_restore

#: what the swrk process of each request must (really measured) and must not import
NEEDED = {"dump": ("spice_criu.rpc", "spice_criu.images.lite", "spice_criu.dump.run"),
          "restore": ("spice_criu.rpc", "spice_criu.images.lite", "spice_criu.restore.run")}


def _forbidden(module: str) -> bool:
    return module == "google" or module.startswith("google.") or module.endswith("_pb2")


@pytest.fixture(scope="module")
def pycriu(criu_bin: Path) -> Any:
    return load_pycriu()


@pytest.fixture(scope="module")
def importtime_criu(compat_tmp: Path) -> tuple[Path, Path]:
    """(a `criu` that runs the installed shim under -X importtime, the file its import log goes to).
    pycriu execs it with fds 0-2 closed, so the wrapper opens stderr itself."""
    shim = install_criu_shim(compat_tmp / "lite-shim")
    log = compat_tmp / "lite-shim" / "importtime.log"
    wrapper = compat_tmp / "lite-shim" / "criu-importtime"
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} -X importtime {shim} "$@" 2>>{log}\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    return wrapper, log


def _imports(log: Path) -> list[str]:
    """The modules one swrk process imported (the log is emptied for the next request)."""
    lines = log.read_text().splitlines()
    log.unlink()
    return [ln.split("|")[-1].strip() for ln in lines if ln.startswith("import time:") and "|" in ln]


@pytest.mark.parametrize("name", ["counter", "tree", "pyholder"])
def test_rpc_dump_and_restore_import_no_protobuf(name: str, pycriu: Any, importtime_criu: tuple[Path, Path],
                                                 workload_factory: Callable[..., harness.Workload]) -> None:
    binary, log = importtime_criu
    log.unlink(missing_ok=True)
    wl = workload_factory(name)
    images = wl.rundir / "rpc-lite-images"
    info = harness.dump_workload(wl, images, dumper=lambda pid, d, lr: pycriu_dump(pycriu, binary, pid, d, lr))
    dumped = _imports(log)
    pid = pycriu_restore(pycriu, binary, images)
    restored = _imports(log)
    try:
        assert pid == info.pid, harness.log_tail(images / "restore.log")
        assert harness.parent_of(pid) == os.getpid()  # rst_sibling: the root is our child
        harness.assert_continues(info, pid)
    finally:
        harness.kill_restored(info, pid)
    for kind, imported in (("dump", dumped), ("restore", restored)):
        assert set(NEEDED[kind]) <= set(imported), (kind, imported)  # the full server really ran, measured
        assert [m for m in imported if _forbidden(m)] == [], kind
