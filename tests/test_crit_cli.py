# SPDX-License-Identifier: MIT
"""`spice crit` / `crit`: every command and option, stdin/stdout, and every kind of bad input.

`make_image_dir` builds a small three-task dump by hand (files of every kind crit's explorers name,
VMAs of every status, pagemaps that straddle VMAs); the expected `x` texts below were checked against
crit 4.2.1, and compat-tests/test_crit_compat.py runs the real crit on the same directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_pb2dict import fill_required, msg

from spice_criu.images import codec
from spice_criu.images.crit import crit

REPO = Path(__file__).resolve().parent.parent

# ------------------------------------------------------------------ a hand-made image directory

R, PRIV, SHARED, ANON_SH, ANON_PRIV = 1, 1 << 6, 1 << 7, 1 << 8, 1 << 9
VMAS_10 = [  # start, end, prot, flags, status, shmid, pgoff
    (0x400000, 0x401000, 5, 0x2, R | PRIV, 5, 0),
    (0x401000, 0x403000, 3, 0x2, R | PRIV, 6, 0x2000),
    (0x500000, 0x510000, 3, 0x1, R | ANON_SH, 777, 0),
    (0x600000, 0x601000, 1, 0x1, R | SHARED, 6, 0),
    (0x700000, 0x710000, 3, 0x22, R | (1 << 5) | ANON_PRIV, 0, 0),
    (0x710000, 0x711000, 3, 0x22, R | (1 << 10), 42, 0),
    (0x720000, 0x721000, 3, 0x22, R | (1 << 11), 43, 0),
    (0x7FF000000000, 0x7FF000021000, 3, 0x122, R | 2 | ANON_PRIV, 0, 0),
    (0x7FF000100000, 0x7FF000102000, 5, 0x22, R | 8, 0, 0),
    (0x7FF000200000, 0x7FF000210000, 3, 0x122, R | ANON_PRIV, 0, 0),
    (0xFFFFFFFFFF600000, 0xFFFFFFFFFF601000, 4, 0x22, 4, 0, 0),
]
PAGEMAP_10 = [(0x400000, 3), (0x500000, 16), (0x700000, 1), (0x702000, 2), (0x7FF000020000, 1)]


def _file(kind: str, fid: int, field: str | None = None, **kw):
    f = codec.entry_class("FILES")()
    f.type = f.DESCRIPTOR.fields_by_name["type"].enum_type.values_by_name[kind].number
    f.id = fid
    if field:
        sub = getattr(f, field)
        for k, v in kw.items():
            setattr(sub, k, v)
        fill_required(sub)
        sub.id = fid
    return f


def make_image_dir(d: Path, crit_safe: bool = False) -> Path:
    """Three tasks (10 -> 11 -> 12), two fd tables, every file kind crit names.

    Unless crit_safe, it also holds what crit 4.2.1 crashes on (fds whose files are in no image, a
    pre-4.2 pagemap entry without field 5) and spice shows as "unknown path", "pipe[?]" and pages.
    """
    d.mkdir(parents=True, exist_ok=True)

    def put(name: str, magic: str, msgs) -> None:
        codec.dump(d / name, codec.make(magic, msgs))

    put("inventory.img", "INVENTORY", [msg("inventory_entry", img_version=2, fdinfo_per_id=True)])
    put("pstree.img", "PSTREE", [msg("pstree_entry", pid=10, ppid=0, pgid=10, sid=10, threads=[10]),
                                 msg("pstree_entry", pid=11, ppid=10, pgid=10, sid=10, threads=[11, 13]),
                                 msg("pstree_entry", pid=12, ppid=11, pgid=12, sid=10, threads=[12])])
    for pid, comm, files_id in [(10, "init", 1), (11, "worker", 2), (12, "leaf", 2)]:
        core = codec.entry_class("CORE")(mtype=1)
        core.tc.comm = comm
        fill_required(core)
        put(f"core-{pid}.img", "CORE", [core])
        put(f"ids-{pid}.img", "IDS", [msg("task_kobj_ids_entry", vm_id=pid, files_id=files_id, fs_id=pid)])
        put(f"fs-{pid}.img", "FS", [msg("fs_entry", cwd_id=8, root_id=7)])
    fds = [(0, 1, 1), (1, 2, 2), (3, 3, 5), (4, 4, 4), (5, 99, 1), (6, 98, 2), (7, 9, 6)]
    if crit_safe:
        fds = [f for f in fds if f[1] < 90]
    put("fdinfo-1.img", "FDINFO", [msg("fdinfo_entry", fd=fd, id=fid, type=t) for fd, fid, t in fds])
    put("fdinfo-2.img", "FDINFO", [msg("fdinfo_entry", fd=0, id=1, type=1), msg("fdinfo_entry", fd=2, id=2, type=2)])
    put("files.img", "FILES", [
        _file("REG", 1, "reg", name="/dev/null"),
        _file("PIPE", 2, "pipe", pipe_id=555),
        _file("UNIXSK", 3, "usk", ino=100, peer=101, name=b"\0abs"),
        _file("INETSK", 4, "isk", family=2, type=1, proto=6, state=10),
        _file("REG", 5, "reg", name="/usr/bin/app"),
        _file("REG", 6, "reg", name="/lib/libc.so"),
        _file("REG", 7, "reg", name="/"),
        _file("REG", 8, "reg", name="/home"),
        _file("EVENTFD", 9),
    ])  # fmt: skip
    for pid, vmas in [(10, VMAS_10), (11, VMAS_10[2:3]), (12, VMAS_10[:1])]:
        mm = codec.entry_class("MM")(exe_file_id=5)
        for start, end, prot, flags, status, shmid, pgoff in vmas:
            mm.vmas.add(start=start, end=end, prot=prot, flags=flags, status=status, shmid=shmid, pgoff=pgoff, fd=-1)
        put(f"mm-{pid}.img", "MM", [fill_required(mm)])
    pm = [msg("pagemap_head", pages_id=1)] + [msg("pagemap_entry", vaddr=v, nr_pages=n, flags=4) for v, n in PAGEMAP_10]
    put("pagemap-10.img", "PAGEMAP", pm)
    old_entry = msg("pagemap_entry", vaddr=0x500000, compat_nr_pages=2)  # pre-4.2: no field 5
    if crit_safe:
        old_entry.nr_pages = 2
    put("pagemap-11.img", "PAGEMAP", [msg("pagemap_head", pages_id=2), old_entry])
    put("pagemap-12.img", "PAGEMAP", [msg("pagemap_head", pages_id=3)])
    put("pipes-data.img", "PIPES_DATA", [msg("pipe_data_entry", pipe_id=555, bytes=5)])
    with open(d / "pipes-data.img", "ab") as f:
        f.write(b"hello")
    return d


X_PS = """\
    PID   PGID    SID   COMM
     10     10     10   init
     11     10     10       worker
     12     12     10           leaf
"""
X_FDS = """\
10
\t      0: /dev/null
\t      1: pipe[555]
\t      3: unix[100 (101) =00abs]
\t      4: INETSK.4
\t      5: unknown path
\t      6: pipe[?]
\t      7: EVENTFD.9
\t    cwd: /home
\t   root: /
11
\t      0: /dev/null
\t      2: pipe[555]
\t    cwd: /home
\t   root: /
12
\t      0: /dev/null
\t      2: pipe[555]
\t    cwd: /home
\t   root: /
"""
X_MEMS = """\
10
\texe                                     /usr/bin/app
\t00400000-00401000                   r-x /usr/bin/app
\t00401000-00403000                   rw- /lib/libc.so + 0x2000
\t00500000-00510000                   rw- shmem[1]
\t00600000-00601000                   r-- /lib/libc.so (s)
\t00700000-00710000                   rw-
\t00710000-00711000                   rw- ips[2]
\t00720000-00721000                   rw- packet[3]
\t7ff000000000-7ff000021000           rw- [stack]
\t7ff000100000-7ff000102000           r-x [vdso]
\t7ff000200000-7ff000210000           rw- [stack?]
\tffffffffff600000-ffffffffff601000   --x [vsyscall] *
11
\texe                                     /usr/bin/app
\t00500000-00510000                   rw- shmem[1]
12
\texe                                     /usr/bin/app
\t00400000-00401000                   r-x /usr/bin/app
"""
_PAD = "\n\t" + " " * 23  # crit ends every VMA of a range with a newline, a tab and 23 spaces
X_RSS = (
    "10\n"
    f"\t400000 / 3              00400000 / 1        /usr/bin/app{_PAD} 00401000 / 2        /lib/libc.so{_PAD}\n"
    f"\t500000 / 16             00500000 / 16      {_PAD}\n"
    f"\t700000 / 1              00700000 / 16      {_PAD}\n"
    f"\t702000 / 2              ~{_PAD}\n"
    f"\t7ff000020000 / 1        7ff000000000 / 33      {_PAD}\n"
    "11\n"
    f"\t500000 / 2              00500000 / 16      {_PAD}\n"
    "12\n"
)


@pytest.fixture
def imgdir(tmp_path: Path) -> Path:
    return make_image_dir(tmp_path / "dump")


def run(*args: str, input: bytes | None = None):
    return CliRunner().invoke(crit, list(args), input=input, catch_exceptions=False)


# ------------------------------------------------------------------ decode / encode / show / info


def test_decode_stdout_plain_and_pretty(imgdir: Path):
    r = run("decode", "-i", str(imgdir / "pstree.img"))
    assert r.exit_code == 0 and r.stdout.endswith("}\n") and r.stdout.count("\n") == 1
    assert r.stdout.startswith('{"magic": "PSTREE", "entries": [{"pid": 10, "ppid": 0, "pgid": 10, "sid": 10, '
                               '"threads": [10]}, ')
    r = run("decode", "--pretty", "-i", str(imgdir / "mm-10.img"))
    assert r.exit_code == 0
    assert r.stdout.startswith('{\n    "magic": "MM",\n    "entries": [\n        {\n            "mm_start_code": "0x0"')
    assert '"prot": "PROT_READ | PROT_EXEC",' in r.stdout
    assert '"status": "VMA_AREA_REGULAR | VMA_FILE_PRIVATE",' in r.stdout
    assert json.loads(r.stdout)["entries"][0]["vmas"][2]["status"] == "VMA_AREA_REGULAR | VMA_ANON_SHARED"


def test_decode_to_file_has_no_trailing_newline_and_encode_restores_bytes(imgdir: Path, tmp_path: Path):
    for name in sorted(os.listdir(imgdir)):
        for pretty in ([], ["--pretty"]):
            out = tmp_path / f"{name}.json"
            assert run("decode", *pretty, "-i", str(imgdir / name), "-o", str(out)).exit_code == 0
            assert not out.read_text().endswith("\n")
            back = tmp_path / name
            r = run("encode", "-i", str(out), "-o", str(back))
            assert r.exit_code == 0 and r.stdout == ""
            assert back.read_bytes() == (imgdir / name).read_bytes(), name


def test_stdin_and_stdout(imgdir: Path):
    raw = (imgdir / "files.img").read_bytes()
    r = run("decode", input=raw)
    assert r.exit_code == 0 and json.loads(r.stdout)["magic"] == "FILES"
    r2 = run("encode", input=r.stdout.encode())
    assert r2.exit_code == 0 and r2.stdout_bytes == raw


def test_show_and_nopl(imgdir: Path):
    r = run("show", str(imgdir / "pipes-data.img"))
    assert r.exit_code == 0
    assert r.stdout == run("decode", "--pretty", "-i", str(imgdir / "pipes-data.img")).stdout
    assert json.loads(r.stdout)["entries"][0]["extra"] == "aGVsbG8=\n"
    r = run("show", "--nopl", str(imgdir / "pipes-data.img"))
    assert json.loads(r.stdout)["entries"][0]["extra"] == "... <5B>"


def test_info(imgdir: Path):
    for name, magic, count in [("pstree.img", "PSTREE", 3), ("pagemap-10.img", "PAGEMAP", 5),
                               ("pagemap-12.img", "PAGEMAP", 0), ("pipes-data.img", "PIPES_DATA", 1)]:
        r = run("info", str(imgdir / name))
        assert r.exit_code == 0 and r.stdout == f'{{\n    "magic": "{magic}",\n    "count": {count}\n}}\n'


@pytest.mark.parametrize("what, text", [("ps", X_PS), ("fds", X_FDS), ("mems", X_MEMS), ("rss", X_RSS)])
def test_explore(imgdir: Path, what: str, text: str):
    r = run("x", str(imgdir), what)
    assert r.exit_code == 0, r.stderr
    assert r.stdout == text


def test_version_and_usage():
    r = run("--version")
    assert r.exit_code == 0 and r.stdout == "4.2.1\n"
    r = run("x", "/tmp", "bogus")
    assert r.exit_code == 2 and "bogus" in r.stderr
    assert "decode" in run("--help").stdout


# ------------------------------------------------------------------ bad input


def _one_error_line(r, *parts: str) -> str:
    assert r.exit_code == 1, (r.exit_code, r.stdout, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error (spice/images): "), r.stderr
    for p in parts:
        assert p in lines[0], (p, lines[0])
    assert "Traceback" not in r.stderr and r.stdout == ""
    return lines[0]


def test_bad_images(imgdir: Path, tmp_path: Path):
    mm = (imgdir / "mm-10.img").read_bytes()
    cases = {
        "truncated.img": (mm[:100], "at offset 8: entry size"),
        "wrongmagic.img": (b"\x01\x02\x03\x04" + mm[4:], "at offset 0: unknown magic 0x04030201"),
        "oversized.img": (mm[:8] + b"\xff\xff\xff\x7f" + mm[12:], "at offset 8: entry size 2147483647 exceeds"),
        "garbage.img": (mm[:8] + b"\x05\x00\x00\x00\xff\xff\xff\xff\xff", "at offset 8: bad mm_entry message"),
        "core-1.img": (mm, "at offset 0: wrong magic: found MM, expected CORE"),
        "pages-1.img": (b"\0" * 4096, "at offset 0: unknown magic 0x00000000"),
        "empty.img": (b"", "at offset 0: truncated: magic"),
    }
    for name, (data, what) in cases.items():
        p = tmp_path / name
        p.write_bytes(data)
        for args in (["decode", "-i", str(p)], ["decode", "--pretty", "-i", str(p)], ["show", str(p)],
                     ["info", str(p)]):
            _one_error_line(run(*args), str(p), what)
    _one_error_line(run("decode", input=mm[:50]), "<stdin> at offset 8")


def test_missing_and_unreadable_inputs(imgdir: Path, tmp_path: Path):
    missing = str(tmp_path / "nope.img")
    for args in (["decode", "-i", missing], ["show", missing], ["info", missing], ["encode", "-i", missing]):
        _one_error_line(run(*args), f"{missing}: no such image file")
    _one_error_line(run("decode", "-i", str(imgdir)), "is a directory")
    _one_error_line(run("x", str(tmp_path / "none"), "ps"), "no such image directory")
    os.unlink(imgdir / "core-11.img")
    _one_error_line(run("x", str(imgdir), "ps"), f"{imgdir}/core-11.img: no such image file")
    os.unlink(imgdir / "pstree.img")
    for what in ("ps", "fds", "mems", "rss"):
        _one_error_line(run("x", str(imgdir), what), f"{imgdir}/pstree.img: no such image file")
    _one_error_line(run("decode", "-i", str(imgdir / "mm-10.img"), "-o", str(tmp_path / "no" / "x.json")),
                    "cannot write")


def test_explore_bad_trees(tmp_path: Path):
    d = make_image_dir(tmp_path / "d")
    codec.dump(d / "pstree.img", codec.make("PSTREE", [msg("pstree_entry", pid=11, ppid=10)]))
    _one_error_line(run("x", str(d), "ps"), "task 11 has parent 10, which is not in the tree")
    codec.dump(d / "pstree.img", codec.make("PSTREE", [msg("pstree_entry", pid=11, ppid=11)]))
    _one_error_line(run("x", str(d), "ps"), "no root task")
    (d / "mm-10.img").write_bytes((d / "mm-10.img").read_bytes()[:-3])
    codec.dump(d / "pstree.img", codec.make("PSTREE", [msg("pstree_entry", pid=10)]))
    _one_error_line(run("x", str(d), "mems"), "mm-10.img at offset 8")


@pytest.mark.parametrize(
    "text, what",
    [
        (b'{"magic": "PSTREE", "entries": [{"pid": 1',
         "at offset 41: bad JSON: Expecting ',' delimiter (line 1 column 42)"),
        (b"", "at offset 0: bad JSON: Expecting value"),
        (b'{"magic": "PSTREE"}\n\xff\xfe', "at offset 20: not JSON text"),
        (b'{"magic": "NOPE", "entries": []}', "magic: unknown image magic: 'NOPE'"),
        (b'{"magic": "PSTREE", "entries": [{"pid": 1}]}', "entries[0]: pstree_entry lacks required field(s)"),
        (b'{"magic": "PSTREE", "entries": [{"pid": "x", "ppid": 0, "pgid": 0, "sid": 0}]}',
         "entries[0].pid: not a valid integer: 'x'"),
        (b'{"magic": "PSTREE", "entries": [{"pid": 4294967296, "ppid": 0, "pgid": 0, "sid": 0}]}',
         "entries[0].pid: 4294967296 does not fit"),
        (b"[" * 100000 + b"]" * 100000, "nested too deeply"),
    ],
)
def test_bad_json(tmp_path: Path, text: bytes, what: str):
    p = tmp_path / "in.json"
    p.write_bytes(text)
    _one_error_line(run("encode", "-i", str(p)), str(p), what)
    _one_error_line(run("encode", input=text), "<stdin>", what)


def test_encode_refuses_a_binary_image(imgdir: Path):
    for name in ("inventory.img", "pstree.img"):
        _one_error_line(run("encode", "-i", str(imgdir / name)), "at offset 0: this is a binary CRIU image")


# ------------------------------------------------------------------ the real entry points


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


@pytest.mark.parametrize("entry", [["-m", "spice_criu", "crit"], ["-m", "spice_criu.images.crit"]],
                         ids=["spice crit", "crit"])
def test_entry_points(imgdir: Path, entry: list[str]):
    cmd = [sys.executable, *entry]
    raw = (imgdir / "pagemap-10.img").read_bytes()
    js = subprocess.run([*cmd, "decode"], input=raw, capture_output=True, env=_env(), check=True).stdout
    back = subprocess.run([*cmd, "encode"], input=js, capture_output=True, env=_env(), check=True).stdout
    assert back == raw
    x = subprocess.run([*cmd, "x", str(imgdir), "ps"], capture_output=True, text=True, env=_env(), check=True)
    assert x.stdout == X_PS
    bad = subprocess.run([*cmd, "decode", "-i", str(imgdir / "nope.img")], capture_output=True, text=True, env=_env())
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr == f"Error (spice/images): {imgdir}/nope.img: no such image file\n"


def test_closed_stdout_pipe_is_quiet(imgdir: Path):
    p = subprocess.Popen([sys.executable, "-m", "spice_criu.images.crit", "show", str(imgdir / "mm-10.img")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    p.stdout.read(10)
    p.stdout.close()
    err = p.stderr.read()
    assert p.wait() in (0, 1) and b"Traceback" not in err
