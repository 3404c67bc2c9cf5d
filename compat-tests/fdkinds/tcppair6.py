# SPDX-License-Identifier: MIT
"""tcppair6: tcppair.py over IPv6 (::1): an established loopback TCP connection between two
processes, data queued both ways.

    python tcppair6.py OUTFILE
"""

from __future__ import annotations

import socket

import tcppair

if __name__ == "__main__":
    tcppair.FAMILY, tcppair.HOST = socket.AF_INET6, "::1"
    tcppair.main()
