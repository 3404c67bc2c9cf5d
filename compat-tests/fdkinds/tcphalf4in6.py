# SPDX-License-Identifier: MIT
"""tcphalf4in6: tcphalf.py on AF_INET6 sockets over an IPv4-mapped address (::ffff:127.0.0.1):
on restore the peer's FIN is forged as the IPv4 segment it is, as libsoccr does.

    python tcphalf4in6.py OUTFILE
"""

from __future__ import annotations

import socket

import tcphalf

if __name__ == "__main__":
    tcphalf.FAMILY, tcphalf.HOST = socket.AF_INET6, "::ffff:127.0.0.1"
    tcphalf.main()
