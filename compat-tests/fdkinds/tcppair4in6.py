# SPDX-License-Identifier: MIT
"""tcppair4in6: tcppair.py on AF_INET6 sockets over an IPv4-mapped address (::ffff:127.0.0.1),
which CRIU locks as the IPv4 connection it is.

    python tcppair4in6.py OUTFILE
"""

from __future__ import annotations

import socket

import tcppair

if __name__ == "__main__":
    tcppair.FAMILY, tcppair.HOST = socket.AF_INET6, "::ffff:127.0.0.1"
    tcppair.main()
