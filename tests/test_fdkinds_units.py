# SPDX-License-Identifier: MIT
"""Unit tests of the fd-kind modules: timerfd arming, termios packing, the nftables lock name and
netlink messages, TCP/epoll/timerfd/tty planning refusals, epoll fdinfo parsing, and the restore
objects applied to real kernel objects in this process."""

from __future__ import annotations

import os
import select
import socket
import struct
import time
from pathlib import Path

import pytest

from spice_criu import netfilter
from spice_criu.errors import ImageError
from spice_criu.images import codec
from spice_criu.restore import eventfds as ev
from spice_criu.restore import tcp, tty
from spice_criu.restore.files import OpenContext, Unsupported

NSEC = 1_000_000_000


def _timer(**kw) -> ev.TimerFd:
    return ev.TimerFd(1, 2, **kw)


def test_timerfd_relative_timer_is_armed_as_dumped() -> None:
    t = _timer(value=(1, 5), interval=(0, 100))
    assert t.arm_setting() == (0, (1, 5), (0, 100))


def test_timerfd_expired_unread_periodic_timer_stays_alive() -> None:
    # the kernel shows 0 remaining for an expired, unread periodic timer: 0 would disarm it
    assert _timer(value=(0, 0), interval=(0, 100), ticks=2).arm_setting() == (0, (0, 100), (0, 100))
    # a one-shot that fired keeps only its ticks; a disarmed timer stays disarmed
    assert _timer(value=(0, 0), interval=(0, 0), ticks=1).arm_setting() == (0, (0, 0), (0, 0))
    assert _timer(value=(0, 0), interval=(0, 100), ticks=0).arm_setting() == (0, (0, 0), (0, 100))


def test_timerfd_absolute_timer_is_rebased_on_the_clock() -> None:
    t = _timer(value=(2, NSEC - 1), interval=(0, 0), settime_flags=ev.TFD_TIMER_ABSTIME)
    assert t.arm_setting(now=(100, 2)) == (1, (103, 1), (0, 0))


def test_timerfd_object_arms_a_real_timer_last() -> None:
    ctx = OpenContext(None)  # type: ignore[arg-type]
    t = ev.TimerFd(1, os.O_NONBLOCK, clockid=1, ticks=3, value=(0, 20_000_000), interval=(0, 50_000_000))
    fd = t.open(ctx)
    try:
        assert os.get_blocking(fd) is False
        with pytest.raises(BlockingIOError):
            os.read(fd, 8)  # not armed yet: armed once every task is built (ctx completion)
        ctx.complete()
        ctx.close_all()
        assert struct.unpack("Q", os.read(fd, 8))[0] == 3  # the dumped unread expirations
        t0 = time.monotonic()
        select.select([fd], [], [], 1)
        assert 0.005 < time.monotonic() - t0 < 0.5
        assert struct.unpack("Q", os.read(fd, 8))[0] >= 1
    finally:
        os.close(fd)


def test_eventfd_and_signalfd_objects() -> None:
    ctx = OpenContext(None)  # type: ignore[arg-type]
    fd = ev.EventFd(1, os.O_NONBLOCK | os.O_RDWR, counter=41).open(ctx)
    try:
        assert struct.unpack("Q", os.read(fd, 8))[0] == 41
        assert not os.get_inheritable(fd)
    finally:
        os.close(fd)
    fd = ev.SignalFd(2, os.O_NONBLOCK, sigmask=1 << 9).open(ctx)
    try:
        text = Path(f"/proc/self/fdinfo/{fd}").read_text()
        assert "sigmask:\t0000000000000200" in text
        assert os.get_blocking(fd) is False
    finally:
        os.close(fd)


def test_termios_control_characters_are_packed_words() -> None:
    # CRIU memcpy()s the c_cc bytes into its uint32 array: ^C ^\\ DEL ^U in the first word
    words = [0x157F1C03, 0x00010004, 0, 0] + [0] * 15
    cc = tty.termios_cc(words)
    assert cc[:8] == bytes([3, 0x1C, 0x7F, 0x15, 4, 0, 1, 0]) and len(cc) == tty.KERNEL_NCCS
    t = codec.pb("tty_info_entry")().termios
    t.c_iflag, t.c_lflag = 1, 2
    t.c_cc.extend(words)
    assert len(tty._termios(t)) == 36  # the kernel's struct termios


def test_tty_inherit_key_is_criu_s() -> None:
    info = codec.pb("tty_info_entry")(id=1, type=1, locked=False, exclusive=False, packet_mode=False, sid=0,
                                      pgrp=0, rdev=0x8800, dev=0x1a)
    assert tty.tty_key(info) == "tty[8800:1a]"


def test_nft_lock_table_is_truncated_like_criu() -> None:
    assert netfilter.nft_lock_table("8487f80d-b4f9-43aa-b639-b84528fb9df4") == "CRIU-8487f80d-b4f9-43aa-b6"


def test_nft_delete_message_layout() -> None:
    nf = netfilter
    m = nf.msg(nf.NFNL_SUBSYS_NFTABLES << 8 | nf.NFT_MSG_DELTABLE, 5, 2, nf.NFPROTO_INET,
               nf.str_attr(nf.NFTA_TABLE_NAME, "CRIU-x"))
    length, mtype, flags, seq, _ = struct.unpack_from("=IHHII", m)
    assert (length, mtype, flags, seq) == (len(m), 0x0A02, 5, 2)
    assert m[16] == nf.NFPROTO_INET
    assert m[20:24] == struct.pack("=HH", 4 + 7, 1) and m[24:31] == b"CRIU-x\0" and len(m) % 4 == 0


def test_nft_delete_of_a_missing_table_says_enoent() -> None:
    with pytest.raises(OSError) as e:
        netfilter.nft_delete_table(netfilter.NFPROTO_INET, "spice-test-no-such-table")
    assert e.value.errno == 2


def _isk(state: int, ino: int = 77) -> object:
    sk = codec.pb("inet_sk_entry")(id=3, ino=ino, family=socket.AF_INET, type=socket.SOCK_STREAM,
                                   proto=socket.IPPROTO_TCP, state=state, src_port=1, dst_port=2, flags=2,
                                   backlog=0)
    sk.src_addr.append(0x0100007F)
    sk.dst_addr.append(0x0100007F)
    return sk


def _imgdir(path, tcp_close: bool = False):
    from spice_criu.images.imagedir import ImageDir

    inv = codec.pb("inventory_entry")(img_version=2, fdinfo_per_id=True)
    if tcp_close:
        inv.tcp_close = True
    codec.dump(path / "inventory.img", codec.make("INVENTORY", [inv]))
    return ImageDir(path)


def test_tcp_still_connecting_is_refused_up_front(tmp_path) -> None:
    obj = tcp.plan_established(_isk(2), _imgdir(tmp_path))
    assert isinstance(obj, Unsupported) and obj.message() == (
        "TCP connection socket:[77] 127.0.0.1:1 -> 127.0.0.1:2 (file id 3): state SYN_SENT (only established "
        "and half-closed connections are restored): not supported")


@pytest.mark.parametrize("state", [4, 5, 8, 9, 11])
def test_half_closed_tcp_is_planned_like_established(tmp_path, state: int) -> None:
    with pytest.raises(ImageError, match="tcp-stream-4d.img"):
        tcp.plan_established(_isk(state, ino=0x4D), _imgdir(tmp_path))


def test_established_tcp_without_its_stream_image_names_it(tmp_path) -> None:
    with pytest.raises(ImageError, match="tcp-stream-4d.img"):
        tcp.plan_established(_isk(1, ino=0x4D), _imgdir(tmp_path))


@pytest.mark.parametrize("state", [1, 8])
def test_connections_of_a_tcp_close_dump_need_no_stream_and_restore_closed(tmp_path, state: int) -> None:
    """Dumped with --tcp-close (inventory.tcp_close): nothing of the connection is in the images,
    whatever its state, and it is planned to be restored as a closed socket."""
    obj = tcp.plan_established(_isk(state, ino=0x4D), _imgdir(tmp_path, tcp_close=True))
    assert isinstance(obj, tcp.TcpConn) and obj.stream is None and "127.0.0.1" in obj.describe()


def test_epoll_with_a_target_listed_twice_is_refused() -> None:
    e = codec.pb("file_entry")(type=7, id=9)
    e.epfd.id, e.epfd.flags = 9, 2
    e.epfd.fown.SetInParent()
    for _ in range(2):
        e.epfd.tfd.add(id=0, tfd=4, events=1, data=0)
    assert isinstance(ev._plan_epoll(e, None, {}), Unsupported)


def test_timerfd_with_an_unknown_clock_is_refused() -> None:
    e = codec.pb("file_entry")(type=17, id=9)
    t = e.tfd
    t.id, t.flags, t.clockid, t.ticks, t.settime_flags, t.vsec, t.vnsec, t.isec, t.insec = 9, 0, 3, 0, 0, 0, 0, 0, 0
    t.fown.SetInParent()
    assert isinstance(ev._plan_timerfd(e, None, {}), Unsupported)


def test_epoll_fdinfo_line_parsing() -> None:
    from spice_criu.dump.eventfds import _TFD

    line = "tfd:        7 events: 80000019 data: 5555000000000005  pos:0 ino:24b00 sdev:9\n"
    m = _TFD.search(line)
    assert m is not None
    assert (int(m[1]), int(m[2], 16), int(m[3], 16), int(m[5], 16), int(m[6], 16)) == (
        7, 0x80000019, 0x5555000000000005, 0x24B00, 9)
