# SPDX-License-Identifier: MIT
"""rawicmp6: rawicmp.py with a raw ICMPv6 socket over ::1 (its type filter is eight words).

    python rawicmp6.py OUTFILE
"""

from __future__ import annotations

import rawicmp

if __name__ == "__main__":
    rawicmp.V6 = True
    rawicmp.main()
