# SPDX-License-Identifier: MIT
"""spice-criu: CRIU-compatible checkpoint/restore that installs process state directly."""

from __future__ import annotations

__version__ = "0.1.0"
# The CRIU release whose images, CLI and RPC this version speaks.
CRIU_VERSION = (4, 2, 1)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import TypeVar

    T = TypeVar("T")


def once(fn: Callable[[], T]) -> Callable[[], T]:
    """functools.cache for a function of no arguments: importing functools (and the collections it
    pulls in) costs ~2 ms of every dump's and restore's start-up."""
    memo: list[T] = []

    def wrapper() -> T:
        if not memo:
            memo.append(fn())
        return memo[0]

    wrapper.__name__, wrapper.__doc__ = fn.__name__, fn.__doc__
    return wrapper
