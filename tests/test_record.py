# SPDX-License-Identifier: MIT
"""record.Record / FrozenRecord: the dataclass stand-in of the restore path."""

from __future__ import annotations

import pytest

from spice_criu.record import Factory, FrozenRecord, Record


class Point(Record):
    x: int
    y: int = 7
    tags: list = Factory(list)


class Frozen(FrozenRecord):
    a: int
    b: str


class Sub(Point):
    z: int = 0


def test_positional_keyword_defaults_and_factories():
    p = Point(1, 2, [3])
    assert (p.x, p.y, p.tags) == (1, 2, [3])
    q = Point(1)
    r = Point(x=1)
    assert (q.x, q.y, q.tags) == (1, 7, []) and q == r
    q.tags.append(1)
    assert r.tags == []  # a fresh default per record
    assert Point(1, tags=[5]).tags == [5]
    assert Sub(1, 2, [], 9).z == 9 and Sub.__fields__ == ("x", "y", "tags", "z")
    assert repr(Point(1, 2, [])) == "Point(x=1, y=2, tags=[])"
    assert Point(1) != Sub(1)


def test_errors():
    with pytest.raises(TypeError, match="missing x"):
        Point()
    with pytest.raises(TypeError, match="at most 3"):
        Point(1, 2, [], 4)
    with pytest.raises(TypeError, match="unknown fields"):
        Point(1, w=2)


def test_frozen_records_are_immutable_and_hashable():
    f = Frozen(1, "x")
    g = Frozen(a=1, b="x")
    assert f == g and hash(f) == hash(g) and len({f, g}) == 1
    with pytest.raises(AttributeError):
        f.a = 2
    with pytest.raises(TypeError):
        hash(Point(1))
