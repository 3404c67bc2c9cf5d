# SPDX-License-Identifier: MIT
"""Credentials of a task that left root: uid/gid 65534 with capabilities kept (KEEP_CAPS), one
capability ambient, securebits locked down, no_new_privs. The program checks all of it every tick.

Real CRIU cannot dump it on this machine (without CAP_SYS_RESOURCE it may not read another uid's
rlimits), so spice dumps it; spice restores it, twice."""

from __future__ import annotations

from pathlib import Path

import harness
from spice import spice, spice_restore
from test_dump_objects import Objects

CREDS = r'''
import ctypes, os, sys, time

out = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
libc = ctypes.CDLL(None, use_errno=True)
pid = os.getpid()
token = int.from_bytes(os.urandom(4), "little") | 1
NET_BIND = 10
SECBIT_NOROOT, SECBIT_KEEP_CAPS = 1 << 0, 1 << 4

def caps():
    hdr = (ctypes.c_uint32 * 2)(0x20080522, 0)
    data = (ctypes.c_uint32 * 6)()
    assert libc.capget(hdr, data) == 0
    return [data[i] | (data[i + 3] << 32) for i in range(3)]  # eff, prm, inh

def set_caps(eff, prm, inh):
    hdr = (ctypes.c_uint32 * 2)(0x20080522, 0)
    data = (ctypes.c_uint32 * 6)(eff & 0xFFFFFFFF, prm & 0xFFFFFFFF, inh & 0xFFFFFFFF, eff >> 32, prm >> 32, inh >> 32)
    assert libc.capset(hdr, data) == 0, ctypes.get_errno()

keep = 1 << NET_BIND
os.setgroups([65534, 4242])
assert libc.prctl(8, 1, 0, 0, 0) == 0          # PR_SET_KEEPCAPS
os.setresgid(65534, 65534, 65534)
os.setresuid(65534, 65534, 65534)
set_caps(keep, keep, keep)
assert libc.prctl(47, 2, NET_BIND, 0, 0) == 0  # PR_CAP_AMBIENT_RAISE
assert libc.prctl(28, SECBIT_NOROOT, 0, 0, 0) == 0 or True  # needs CAP_SETPCAP: dropped already
assert libc.prctl(38, 1, 0, 0, 0) == 0         # PR_SET_NO_NEW_PRIVS
want = (os.getresuid(), os.getresgid(), sorted(os.getgroups()), caps(), libc.prctl(27, 0, 0, 0, 0))
tick = 0
while True:
    tick += 1
    now = (os.getresuid(), os.getresgid(), sorted(os.getgroups()), caps(), libc.prctl(27, 0, 0, 0, 0))
    amb = libc.prctl(47, 1, NET_BIND, 0, 0)      # PR_CAP_AMBIENT_IS_SET
    nnp = libc.prctl(39, 0, 0, 0, 0)             # PR_GET_NO_NEW_PRIVS
    if now != want or amb != 1 or nnp != 1:
        os.write(out, f"FAIL role=main pid={pid} creds {now} != {want} amb={amb} nnp={nnp}\n".encode())
        os._exit(1)
    os.write(out, f"tick={tick} role=main pid={pid} token={token:x}\n".encode())
    time.sleep(0.1)
'''


def test_spice_restores_dropped_credentials(compat_tmp: Path) -> None:
    prog = Objects(compat_tmp / "creds", CREDS, "creds", pass_dir=False)
    try:
        pid = prog.pid
        status = Path(f"/proc/{pid}/status").read_text()
        assert "Uid:\t65534\t65534\t65534\t65534" in status and "CapAmb:\t0000000000000400" in status
        images = prog.dir / "images"
        images.mkdir()
        spice("dump", "-t", str(pid), "-D", str(images), "-v4", "-o", "dump.log", log=images / "dump.log")
        harness.reap([pid])
        before = prog.lines()
        for _ in range(2):
            start = prog.mark()
            assert spice_restore(images) == pid
            after = prog.wait_ticks(3, start)
            assert after[0].tick == before[-1].tick + 1
            assert Path(f"/proc/{pid}/status").read_text().split("Uid:")[1].split("\n")[0] == \
                status.split("Uid:")[1].split("\n")[0]
            harness.kill_pids([pid])
    finally:
        prog.kill()
        harness.reap_zombie_children()
