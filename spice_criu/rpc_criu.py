# SPDX-License-Identifier: MIT
"""The `criu` entry point: spice installed under criu's name, for runc, containerd, podman, crun
(libcriu), go-criu and pycriu, which all exec `criu swrk <fd>` from $PATH.

`criu swrk N` goes straight to the RPC server (no command-line parsing on the path every container
checkpoint/restore takes); everything else is spice's criu-compatible command line.
"""

from __future__ import annotations

import sys


def swrk(fd: int) -> int:
    """`criu swrk FD`: a lone VERSION/FEATURE_CHECK without protobuf (rpc_fast), else the RPC server.

    After the full server the process ends right here, without the interpreter's teardown (as a CLI
    dump or restore does, cli._quick_exit): clients such as pycriu wait for `criu swrk` to exit."""
    from .rpc_fast import try_fast

    rc = try_fast(fd)
    if rc is not None:
        return rc
    from .cli import _quick_exit
    from .rpc import serve_swrk

    _quick_exit(serve_swrk(fd))
    return 1  # not reached


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) == 2 and args[0] == "swrk" and args[1].isdigit():
        sys.exit(swrk(int(args[1])))
    from .cli import main as cli_main

    cli_main(args)


if __name__ == "__main__":
    main()
