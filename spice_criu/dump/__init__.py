# SPDX-License-Identifier: MIT
"""Checkpoint: seize the tree, collect per-object state, write the images (see run.py)."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import TypeVar

    T = TypeVar("T")


def once(fn: Callable[[], T]) -> Callable[[], T]:
    """functools.cache for a function of no arguments: importing functools (and the collections it
    pulls in) costs ~2 ms of every dump's start-up."""
    memo: list[T] = []

    def wrapper() -> T:
        if not memo:
            memo.append(fn())
        return memo[0]

    wrapper.__name__, wrapper.__doc__ = fn.__name__, fn.__doc__
    return wrapper
