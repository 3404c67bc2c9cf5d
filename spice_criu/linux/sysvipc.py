# SPDX-License-Identifier: MIT
"""SysV message queues and semaphore sets (msgget/msgctl/msgsnd/msgrcv, semget/semctl): what
dump/ipcns.py reads of them and restore/ipcns.py makes again, inside the tree's ipc namespace.

x86_64 layouts (the kernel's ipc64_perm, msqid64_ds, semid64_ds, which glibc passes through)."""

from __future__ import annotations

import ctypes

from .syscalls import check

IPC_CREAT, IPC_EXCL, IPC_NOWAIT = 0o1000, 0o2000, 0o4000
IPC_SET, IPC_STAT = 1, 2
GETALL, SETALL = 13, 17
MSG_COPY = 0o40000  # msgrcv: read message number msgtyp without removing it (CONFIG_CHECKPOINT_RESTORE)


class IpcPerm(ctypes.Structure):
    _fields_ = [("key", ctypes.c_int32), ("uid", ctypes.c_uint32), ("gid", ctypes.c_uint32),
                ("cuid", ctypes.c_uint32), ("cgid", ctypes.c_uint32), ("mode", ctypes.c_uint16),
                ("pad1", ctypes.c_uint16), ("seq", ctypes.c_uint16), ("pad2", ctypes.c_uint16),
                ("unused1", ctypes.c_ulong), ("unused2", ctypes.c_ulong)]


class MsqidDs(ctypes.Structure):
    _fields_ = [("perm", IpcPerm), ("stime", ctypes.c_long), ("rtime", ctypes.c_long), ("ctime", ctypes.c_long),
                ("cbytes", ctypes.c_ulong), ("qnum", ctypes.c_ulong), ("qbytes", ctypes.c_ulong),
                ("lspid", ctypes.c_int), ("lrpid", ctypes.c_int), ("unused4", ctypes.c_ulong),
                ("unused5", ctypes.c_ulong)]


class SemidDs(ctypes.Structure):
    _fields_ = [("perm", IpcPerm), ("otime", ctypes.c_long), ("unused1", ctypes.c_ulong), ("ctime", ctypes.c_long),
                ("unused2", ctypes.c_ulong), ("nsems", ctypes.c_ulong), ("unused3", ctypes.c_ulong),
                ("unused4", ctypes.c_ulong)]


_libc = ctypes.CDLL(None, use_errno=True)
for _name, _args in (("msgget", [ctypes.c_int, ctypes.c_int]), ("semget", [ctypes.c_int, ctypes.c_int, ctypes.c_int]),
                     ("msgctl", [ctypes.c_int, ctypes.c_int, ctypes.c_void_p]),
                     ("msgsnd", [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int])):
    getattr(_libc, _name).argtypes = _args
_libc.msgrcv.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_long, ctypes.c_int]
_libc.msgrcv.restype = ctypes.c_ssize_t


def msgget(key: int, flags: int) -> int:
    return check(_libc.msgget(key, flags), "msgget")


def semget(key: int, nsems: int, flags: int) -> int:
    return check(_libc.semget(key, nsems, flags), "semget")


def msg_stat(qid: int) -> MsqidDs:
    ds = MsqidDs()
    check(_libc.msgctl(qid, IPC_STAT, ctypes.byref(ds)), f"msgctl({qid}, IPC_STAT)")
    return ds


def msg_set(qid: int, ds: MsqidDs) -> None:
    check(_libc.msgctl(qid, IPC_SET, ctypes.byref(ds)), f"msgctl({qid}, IPC_SET)")


def msg_copy(qid: int, n: int, maxsize: int) -> tuple[int, bytes]:
    """Message number n of a queue, left in it: (mtype, text)."""
    buf = ctypes.create_string_buffer(8 + maxsize)
    got = _libc.msgrcv(qid, buf, maxsize, n, IPC_NOWAIT | MSG_COPY)
    check(got, f"msgrcv({qid}, MSG_COPY {n})")
    return ctypes.c_long.from_buffer(buf).value, buf.raw[8:8 + got]


def msg_send(qid: int, mtype: int, text: bytes) -> None:
    buf = ctypes.create_string_buffer(ctypes.c_long(mtype).value.to_bytes(8, "little", signed=True) + text)
    check(_libc.msgsnd(qid, buf, len(text), IPC_NOWAIT), f"msgsnd({qid})")


def sem_stat(sid: int) -> SemidDs:
    ds = SemidDs()
    check(_libc.semctl(ctypes.c_int(sid), ctypes.c_int(0), ctypes.c_int(IPC_STAT), ctypes.byref(ds)),
          f"semctl({sid}, IPC_STAT)")
    return ds


def sem_set(sid: int, ds: SemidDs) -> None:
    check(_libc.semctl(ctypes.c_int(sid), ctypes.c_int(0), ctypes.c_int(IPC_SET), ctypes.byref(ds)),
          f"semctl({sid}, IPC_SET)")


def sem_values(sid: int, nsems: int) -> list[int]:
    arr = (ctypes.c_ushort * max(nsems, 1))()
    check(_libc.semctl(ctypes.c_int(sid), ctypes.c_int(0), ctypes.c_int(GETALL), arr), f"semctl({sid}, GETALL)")
    return list(arr[:nsems])


def sem_set_values(sid: int, values: list[int]) -> None:
    arr = (ctypes.c_ushort * max(len(values), 1))(*values)
    check(_libc.semctl(ctypes.c_int(sid), ctypes.c_int(0), ctypes.c_int(SETALL), arr), f"semctl({sid}, SETALL)")
