# SPDX-License-Identifier: MIT
"""tcphalf: half-closed loopback TCP connections, both ends held by one process, with data queued
around the FINs. The workload of the half-closed --tcp-established tests.

    python tcphalf.py OUTFILE      (tcphalf6.py: over ::1; tcphalf4in6.py: over ::ffff:127.0.0.1)

Three connections (clients with a 4 KiB receive buffer, so the servers' answers queue up):

* A, "request, then wait for the answer": the client sends REQ 16-byte messages and shuts its
  write side at once (client FIN_WAIT2, server CLOSE_WAIT, the FIN queued behind the messages).
  The server reads one message per tick and answers each with 1 KiB; after the last message its
  next read must be end of file, then it shuts down its own write side (LAST_ACK). The client
  reads 1 KiB per tick and must see end of file right after the last byte of the answer.
* B, "answer already written": the client sent one message and shut down; the server has read it
  and end of file, queued its whole ANS-byte answer and shut down (server LAST_ACK with data and
  FIN unsent, client FIN_WAIT2). The client reads 1 KiB per tick, then end of file.
* C, "the server closes first": the server queues ANS bytes and shuts down (FIN_WAIT1 while the
  data and its FIN wait for the client's window); the client keeps sending a message per tick,
  which the server reads; the client reads 1 KiB per tick, and at end of file shuts down too; the
  server's next read is then end of file.
* D, "both close at once": the server queues ANS bytes and shuts down (FIN_WAIT1, its FIN behind
  the data), then the client sends one message and shuts down: the server gets that FIN before
  the ACK of its own (CLOSING), the client the ACK of its FIN (FIN_WAIT2). From tick 20 the server
  reads the message, then end of file; the client reads 1 KiB per tick, then end of file.

Every tick appends ``tick=N role=main pid=P token=T seq=N st=S ra= ea= ca= xa= cb= xb= cc= xc= rc= ec=
cd= xd= rd= ed=`` where S is the eight sockets' TCP states (A server, A client, B server, B client,
C server, C client, D server, D client, as TCP_INFO numbers joined by dots), r*/c* count messages /
answer bytes read, e*/x* are 1 once the server / client saw end of file. Every byte is checked;
a wrong byte, an end of file too early, data after it, or an error: a FAIL line and exit 1.
"""

from __future__ import annotations

import errno
import hashlib
import socket
import struct
import sys

import ticks

REQ, ANS, STEP = 40, 48 * 1024, 1024
CONNS = "abcd"
D_READS = 20  # the tick from which D's server reads
FAMILY, HOST = socket.AF_INET, "127.0.0.1"


def blob(token: int, name: str, size: int) -> bytes:
    out, i = b"", 0
    while len(out) < size:
        out += hashlib.sha256(struct.pack("<Q", token) + name.encode() + struct.pack("<I", i)).digest()
        i += 1
    return out[:size]


def state(s: socket.socket) -> int:
    return s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]


class Half:
    def __init__(self, out: ticks.Out) -> None:
        self.out = out
        tok = out.token
        self.ans = {n: blob(tok, n, ANS if n != "a" else REQ * STEP) for n in CONNS}
        lsn = socket.socket(FAMILY, socket.SOCK_STREAM)
        lsn.bind((HOST, 0))
        lsn.listen(4)
        self.lsn = lsn
        self.cli, self.srv = {}, {}
        for n in CONNS:
            c = socket.socket(FAMILY, socket.SOCK_STREAM)
            c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            c.connect(lsn.getsockname()[:2])
            s, _ = lsn.accept()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 256 * 1024)
            s.setblocking(False)
            c.setblocking(False)
            self.cli[n], self.srv[n] = c, s
        self.got = {n: 0 for n in CONNS}  # answer bytes the client read
        self.cli_eof = {n: 0 for n in CONNS}
        self.pending = {n: b"" for n in CONNS}  # answer bytes not yet taken by the kernel
        self.shut_after_pending = {n: False for n in CONNS}
        self.ra = self.rc = self.rd = 0  # messages read by A's, C's and D's server
        self.ea = self.ec = self.ed = 0
        self.c_sent = 0
        # A: the whole request, then the client's FIN
        self.cli["a"].sendall(b"".join(self.msg(i) for i in range(1, REQ + 1)))
        self.cli["a"].shutdown(socket.SHUT_WR)
        # B: one message and the FIN; the server reads both and queues all its answer, then its FIN
        self.cli["b"].sendall(self.msg(1))
        self.cli["b"].shutdown(socket.SHUT_WR)
        self.srv["b"].setblocking(True)
        if self.recv_exact(self.srv["b"], 16, "B request") != self.msg(1) or self.srv["b"].recv(1) != b"":
            out.fail("B: the server did not get the request and its end of file")
        self.srv["b"].setblocking(False)
        self.queue("b", self.ans["b"], shut=True)
        # C: the server answers and shuts down first
        self.queue("c", self.ans["c"], shut=True)
        # D: the server answers and shuts down, then the client sends its message and shuts down
        self.queue("d", self.ans["d"], shut=True)
        self.cli["d"].sendall(self.msg(1))
        self.cli["d"].shutdown(socket.SHUT_WR)

    def msg(self, n: int) -> bytes:
        return struct.pack("<QQ", self.out.token, n)

    def recv_exact(self, s: socket.socket, n: int, what: str) -> bytes:
        buf = b""
        while len(buf) < n:
            part = s.recv(n - len(buf))
            if not part:
                self.out.fail(f"{what}: end of file after {len(buf)} of {n} bytes")
            buf += part
        return buf

    def recv(self, s: socket.socket, n: int, what: str) -> bytes | None:
        """Up to n bytes without blocking: None when nothing is there yet, b"" at end of file."""
        try:
            return s.recv(n)
        except BlockingIOError:
            return None
        except OSError as e:
            self.out.fail(f"{what}: {errno.errorcode.get(e.errno or 0, e)}")
        return None

    def queue(self, n: str, data: bytes, shut: bool = False) -> None:
        self.pending[n] += data
        self.shut_after_pending[n] = self.shut_after_pending[n] or shut
        self.push(n)

    def push(self, n: str) -> None:
        s = self.srv[n]
        while self.pending[n]:
            try:
                sent = s.send(self.pending[n])
            except BlockingIOError:
                return
            except OSError as e:
                self.out.fail(f"{n.upper()}: server send: {errno.errorcode.get(e.errno or 0, e)}")
            self.pending[n] = self.pending[n][sent:]
        if self.shut_after_pending[n]:
            s.shutdown(socket.SHUT_WR)
            self.shut_after_pending[n] = False

    def read_answer(self, n: str, tick: int) -> None:
        if self.cli_eof[n] or tick < 4:  # the client lags three ticks behind
            return
        data = self.recv(self.cli[n], STEP, f"{n.upper()}: client read")
        if data is None:
            return
        want = self.ans[n]
        if data == b"":
            if self.got[n] != len(want) or (n == "a" and not self.ea):
                self.out.fail(f"{n.upper()}: client got end of file after {self.got[n]} of {len(want)} bytes")
            self.cli_eof[n] = 1
            if n == "c":
                self.cli["c"].shutdown(socket.SHUT_WR)
            return
        if data != want[self.got[n] : self.got[n] + len(data)]:
            self.out.fail(f"{n.upper()}: answer bytes {self.got[n]}..{self.got[n] + len(data)} corrupt")
        self.got[n] += len(data)

    def step(self, tick: int) -> None:
        for n in CONNS:
            self.push(n)
        # A's server: one message per tick, then end of file, then its own FIN
        if not self.ea:
            data = self.recv(self.srv["a"], 16, "A: server read")
            if data == b"":
                if self.ra != REQ:
                    self.out.fail(f"A: server got end of file after {self.ra} of {REQ} messages")
                self.ea = 1
                self.queue("a", b"", shut=True)
            elif data is not None:
                data += self.recv_exact(self.srv["a"], 16 - len(data), "A: message") if len(data) < 16 else b""
                if data != self.msg(self.ra + 1):
                    self.out.fail(f"A: message {self.ra + 1} is {data.hex()}")
                self.ra += 1
                self.queue("a", self.ans["a"][(self.ra - 1) * STEP : self.ra * STEP])
        # C: the client sends a message per tick until it saw end of file; the server reads them
        if not self.cli_eof["c"]:
            self.c_sent += 1
            try:
                self.cli["c"].send(self.msg(self.c_sent))
            except OSError as e:
                self.out.fail(f"C: client send: {errno.errorcode.get(e.errno or 0, e)}")
        while not self.ec:
            data = self.recv(self.srv["c"], 16, "C: server read")
            if data is None:
                break
            if data == b"":
                if self.rc != self.c_sent or not self.cli_eof["c"]:
                    self.out.fail(f"C: server got end of file after {self.rc} of {self.c_sent} messages")
                self.ec = 1
                break
            data += self.recv_exact(self.srv["c"], 16 - len(data), "C: message") if len(data) < 16 else b""
            if data != self.msg(self.rc + 1):
                self.out.fail(f"C: message {self.rc + 1} is {data.hex()}")
            self.rc += 1
        # D's server, from tick D_READS: the message, then end of file
        if tick >= D_READS and not self.ed:
            data = self.recv(self.srv["d"], 16, "D: server read")
            if data == b"":
                if self.rd != 1:
                    self.out.fail("D: server got end of file before the message")
                self.ed = 1
            elif data is not None:
                data += self.recv_exact(self.srv["d"], 16 - len(data), "D: message") if len(data) < 16 else b""
                if self.rd or data != self.msg(1):
                    self.out.fail(f"D: message {self.rd + 1} is {data.hex()}")
                self.rd = 1
        for n in CONNS:
            self.read_answer(n, tick)
        st = ".".join(str(state(x)) for n in CONNS for x in (self.srv[n], self.cli[n]))
        self.out.line(tick, st=st, ra=self.ra, ea=self.ea, ca=self.got["a"], xa=self.cli_eof["a"],
                      cb=self.got["b"], xb=self.cli_eof["b"], cc=self.got["c"], xc=self.cli_eof["c"],
                      rc=self.rc, ec=self.ec, cd=self.got["d"], xd=self.cli_eof["d"], rd=self.rd, ed=self.ed)


def main() -> None:
    out = ticks.Out(sys.argv[1])
    ticks.run(Half(out).step)


if __name__ == "__main__":
    main()
