# SPDX-License-Identifier: MIT
"""tcphalf6: tcphalf.py over IPv6 (::1): the peer's FIN is forged as IPv6 on restore.

    python tcphalf6.py OUTFILE
"""

from __future__ import annotations

import socket

import tcphalf

if __name__ == "__main__":
    tcphalf.FAMILY, tcphalf.HOST = socket.AF_INET6, "::1"
    tcphalf.main()
