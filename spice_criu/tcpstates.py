# SPDX-License-Identifier: MIT
"""TCP states as the kernel numbers them (include/net/tcp_states.h, what TCP_INFO, sock_diag and
inet_sk_entry.state hold), and where a connection's FINs sit in each state spice dumps and
restores, in libsoccr's terms: a FIN takes one sequence number and no byte of a queue.

Shared by dump/sockets.py, dump/tcp.py and restore/tcp.py.
"""

from __future__ import annotations

ESTABLISHED, SYN_SENT, SYN_RECV, FIN_WAIT1, FIN_WAIT2, TIME_WAIT, CLOSE, CLOSE_WAIT, LAST_ACK, LISTEN, CLOSING = \
    range(1, 12)
NAMES = {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2", 6: "TIME_WAIT",
         7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING", 12: "NEW_SYN_RECV"}

#: connections dumped and restored with TCP_REPAIR (--tcp-established): established or half-closed.
#: CRIU also takes SYN_SENT (a connect() in progress); spice refuses it by name.
CONNECTED = frozenset({ESTABLISHED, FIN_WAIT1, FIN_WAIT2, CLOSE_WAIT, LAST_ACK, CLOSING})
#: our FIN is in the send queue: SIOCOUTQ (and SIOCOUTQNSD while it is unsent) count it, the
#: image does not, and write_seq (outq_seq) is one past the last byte
FIN_SENT = frozenset({FIN_WAIT1, FIN_WAIT2, CLOSING, LAST_ACK})
#: ... and the peer acknowledged it
FIN_SENT_ACKED = frozenset({FIN_WAIT2})
#: the peer's FIN arrived: rcv_nxt (inq_seq) is one past the last byte of the receive queue
FIN_RECEIVED = frozenset({CLOSE_WAIT, LAST_ACK, CLOSING})


def name(state: int) -> str:
    return NAMES.get(state, str(state))
