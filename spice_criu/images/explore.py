# SPDX-License-Identifier: MIT
"""`crit x DIR ps|fds|mems|rss`: the process tree, open files, memory map and resident pages of a dump.

The text is crit 4.2.1's, character for character (same columns, same quirks: the rss walk, the
shmem/file labels), so scripts reading crit's output read spice's. Where crit crashes on an image
(a task without a parent in the tree, a legacy image that is not there, a pre-4.2 pagemap) spice
prints what the image says or a one-line ImageError instead.
"""

from __future__ import annotations

import sys
from pathlib import Path

from google.protobuf.message import Message

from ..errors import ImageError
from . import codec
from .pagemap import entry_pages
from .pb2dict import _encode_unix, _str_value

VMA_REGULAR = 1 << 0
VMA_STACK = 1 << 1
VMA_VSYSCALL = 1 << 2
VMA_VDSO = 1 << 3
VMA_FILE_PRIVATE = 1 << 6
VMA_FILE_SHARED = 1 << 7
VMA_ANON_SHARED = 1 << 8
VMA_SYSVIPC = 1 << 10
VMA_SOCKET = 1 << 11
MAP_GROWSDOWN = 0x0100

# fd type -> (field of file_entry, legacy image holding such files)
_FILE_KINDS = {"REG": ("reg", "reg-files.img"), "PIPE": ("pipe", "pipes.img"), "UNIXSK": ("usk", "unixsk.img")}


class Explorer:
    """Reads one image directory the way crit's explorers do, caching what they cache."""

    def __init__(self, path: str | Path) -> None:
        self.dir = Path(path)
        self._files: dict[int, Message] | None = None
        self._legacy: dict[str, dict[int, Message]] = {}
        self._names: dict[tuple[str, int], str] = {}

    def load(self, name: str) -> list[Message]:
        return codec.load(self.dir / name).messages

    def one(self, name: str) -> Message:
        msgs = self.load(name)
        if not msgs:
            raise ImageError(self.dir / name, "image holds no entry")
        return msgs[0]

    def tasks(self) -> list[Message]:
        return self.load("pstree.img")

    # -------------------------------------------------------------- file names

    def _by_id(self, msgs: list[Message]) -> dict[int, Message]:
        out: dict[int, Message] = {}
        for m in msgs:
            out.setdefault(m.id, m)  # crit takes the first entry with that id
        return out

    def _find(self, kind: str, fid: int) -> Message | None:
        if self._files is None:
            self._files = self._by_id(self.load("files.img")) if (self.dir / "files.img").exists() else {}
        f = self._files.get(fid)
        field, legacy = _FILE_KINDS[kind]
        if f is not None:
            return getattr(f, field) if f.HasField(field) else None
        if legacy not in self._legacy:
            path = self.dir / legacy
            self._legacy[legacy] = self._by_id(self.load(legacy)) if path.exists() else {}
        return self._legacy[legacy].get(fid)

    def file_str(self, kind: str, fid: int) -> str:
        key = (kind, fid)
        s = self._names.get(key)
        if s is None:
            s = self._names[key] = self._describe(kind, fid)
        return s

    def _describe(self, kind: str, fid: int) -> str:
        if kind not in _FILE_KINDS:
            return f"{kind}.{fid}"
        f = self._find(kind, fid)
        if kind == "REG":
            return _str_value(f.name) if f is not None and f.name else "unknown path"
        if kind == "PIPE":
            return f"pipe[{f.pipe_id}]" if f is not None else "pipe[?]"
        if f is None:
            return "unix[?]"
        name = _encode_unix(f.name)
        return f"unix[{f.ino} ({f.peer}){' ' + name if name else ''}]"

    # -------------------------------------------------------------- explorers

    def ps(self) -> list[str]:
        tasks = self.tasks()
        nodes: dict[int, tuple[Message, str]] = {}
        for p in tasks:
            core = self.one(f"core-{p.pid}.img")
            if not core.HasField("tc"):
                raise ImageError(self.dir / f"core-{p.pid}.img", "no task_core_entry (tc): not a leader's core")
            nodes[p.pid] = (p, _str_value(core.tc.comm))
        kids: dict[int, list[int]] = {pid: [] for pid in nodes}
        root = None
        for pid, (p, _) in nodes.items():
            if p.ppid == 0:
                root = pid
                continue
            if p.ppid not in kids:
                raise ImageError(self.dir / "pstree.img", f"task {pid} has parent {p.ppid}, which is not in the tree")
            kids[p.ppid].append(pid)
        if root is None:
            raise ImageError(self.dir / "pstree.img", "no root task (one with ppid 0)")
        lines = [f"{'PID':>7}{'PGID':>7}{'SID':>7}   COMM"]
        stack, seen = [(root, 0)], set()
        while stack:
            pid, depth = stack.pop()
            if pid in seen:
                continue
            seen.add(pid)
            p, comm = nodes[pid]
            lines.append(f"{pid:7d}{p.pgid:7d}{p.sid:7d}   {' ' * (4 * depth)}{comm}")
            stack.extend((k, depth + 1) for k in reversed(kids[pid]))
        return lines

    def fds(self) -> list[str]:
        lines = []
        fd_type = codec.pb("fdinfo_entry").DESCRIPTOR.fields_by_name["type"].enum_type
        type_names = {v.number: v.name for v in fd_type.values}
        for p in self.tasks():
            files_id = self.one(f"ids-{p.pid}.img").files_id
            fdinfo = self.load(f"fdinfo-{files_id}.img")
            lines.append(f"{p.pid}")
            for fd in fdinfo:
                kind = type_names.get(fd.type, str(fd.type))
                lines.append(f"\t{fd.fd:7d}: {self.file_str(kind, fd.id)}")
            fs = self.one(f"fs-{p.pid}.img")
            lines.append(f"\t{'cwd':>7}: {self.file_str('REG', fs.cwd_id)}")
            lines.append(f"\t{'root':>7}: {self.file_str('REG', fs.root_id)}")
        return lines

    def mems(self) -> list[str]:
        lines = []
        ids: dict[int, int] = {}

        def vid(shmid: int) -> int:
            return ids.setdefault(shmid, len(ids) + 1)

        for p in self.tasks():
            mm = self.one(f"mm-{p.pid}.img")
            lines.append(f"{p.pid}")
            lines.append(f"\t{'exe':<36}    {self.file_str('REG', mm.exe_file_id)}")
            for vma in mm.vmas:
                st = vma.status
                if st & VMA_SYSVIPC:
                    fn = f" ips[{vid(vma.shmid):x}]"
                elif st & VMA_ANON_SHARED:
                    fn = f" shmem[{vid(vma.shmid):x}]"
                elif st & VMA_SOCKET:
                    fn = f" packet[{vid(vma.shmid):x}]"
                elif st & (VMA_FILE_PRIVATE | VMA_FILE_SHARED):
                    fn = " " + self.file_str("REG", vma.shmid)
                    if vma.pgoff:
                        fn += f" + {vma.pgoff:#x}"
                    if st & VMA_FILE_SHARED:
                        fn += " (s)"
                elif st & VMA_STACK:
                    fn = " [stack]"
                elif st & VMA_VSYSCALL:
                    fn = " [vsyscall]"
                elif st & VMA_VDSO:
                    fn = " [vdso]"
                elif vma.flags & MAP_GROWSDOWN:
                    fn = " [stack?]"
                else:
                    fn = ""
                if not st & VMA_REGULAR:
                    fn += " *"
                prot = ("r" if vma.prot & 1 else "-") + ("w" if vma.prot & 2 else "-") + ("x" if vma.prot & 4 else "-")
                lines.append(f"\t{f'{vma.start:08x}-{vma.end:08x}':<36}{prot}{fn}")
        return lines

    def rss(self) -> list[str]:
        lines = []
        for p in self.tasks():
            vmas = list(self.one(f"mm-{p.pid}.img").vmas)
            pms = self.load(f"pagemap-{p.pid}.img")
            lines.append(f"{p.pid}")
            # crit's walk, literally (including its backing up one VMA after each range)
            vmi, pvmi = 0, -1
            for pm in pms[1:]:
                nr = entry_pages(pm)
                pstr = f"\t{pm.vaddr:x} / {nr:<8d}"
                while vmi < len(vmas) and vmas[vmi].end <= pm.vaddr:
                    vmi += 1
                pme = pm.vaddr + (nr << 12)
                vstr = ""
                while vmi < len(vmas) and vmas[vmi].start < pme:
                    vma = vmas[vmi]
                    if vmi == pvmi:
                        vstr += " ~"
                    else:
                        vstr += f" {vma.start:08x} / {(vma.end - vma.start) >> 12:<8d}"
                        if vma.status & (VMA_FILE_PRIVATE | VMA_FILE_SHARED):
                            vstr += " " + self.file_str("REG", vma.shmid)
                        pvmi = vmi
                    vstr += "\n\t" + " " * 23
                    vmi += 1
                vmi -= 1
                lines.append(f"{pstr:<24}{vstr}")
        return lines


EXPLORERS = ("ps", "fds", "mems", "rss")


def explore(path: str | Path, what: str) -> str:
    """The text `crit x path what` prints."""
    if what not in EXPLORERS:
        raise ValueError(what)
    if not Path(path).is_dir():
        raise ImageError(path, "no such image directory")
    lines = getattr(Explorer(path), what)()
    return "\n".join(lines) + "\n"


def write_text(text: str) -> None:
    """Print, keeping any non-UTF-8 bytes of names as they were in the image."""
    sys.stdout.flush()
    sys.stdout.buffer.write(text.encode("utf-8", "surrogateescape"))
    sys.stdout.buffer.flush()
