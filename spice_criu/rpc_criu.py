# SPDX-License-Identifier: MIT
"""The `criu` entry point: spice installed under criu's name, for runc, containerd, podman, crun
(libcriu), go-criu and pycriu, which all exec `criu swrk <fd>` from $PATH.

`criu swrk N` goes straight to the RPC server (no command-line parsing on the path every container
checkpoint/restore takes); everything else is spice's criu-compatible command line.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) == 2 and args[0] == "swrk" and args[1].isdigit():
        from .rpc import serve_swrk

        sys.exit(serve_swrk(int(args[1])))
    from .cli import main as cli_main

    cli_main(args)


if __name__ == "__main__":
    main()
