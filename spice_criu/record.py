# SPDX-License-Identifier: MIT
"""Record: a light stand-in for @dataclass on the restore path.

`spice restore` is a short-lived command whose wall time is compared with CRIU's; @dataclass costs
an `inspect` import plus generated code for every class at start-up, which added up to a sizeable
share of a restore. A Record takes its fields from the class annotations (ClassVar ones excluded)
and their defaults from class attributes, with no code generation.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs ~10 ms of start-up; annotations are strings
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any


_MISSING = object()


class Factory:
    """A default made fresh for every record (like dataclasses.field(default_factory=...))."""

    __slots__ = ("make",)

    def __init__(self, make: Callable[[], Any]) -> None:
        self.make = make


class Record:
    __fields__: tuple[str, ...] = ()
    #: (name, class-level default or _MISSING) of every field, in order: read once, at class creation
    __defaults__: tuple[tuple[str, Any], ...] = ()

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        names: list[str] = []
        for klass in reversed(cls.__mro__):
            for name, ann in klass.__dict__.get("__annotations__", {}).items():
                if not str(ann).startswith("ClassVar") and not name.startswith("__") and name not in names:
                    names.append(name)
        cls.__fields__ = tuple(names)
        cls.__defaults__ = tuple((name, getattr(cls, name, _MISSING)) for name in names)

    def __init__(self, *args: Any, **kw: Any) -> None:
        fields = self.__fields__
        n = len(args)
        if n == len(fields) and not kw:  # the common case: every field, in order
            self.__dict__.update(zip(fields, args, strict=True))
            return
        if n > len(fields):
            raise TypeError(f"{type(self).__name__} takes at most {len(fields)} values")
        values = dict(zip(fields, args, strict=False))
        for name, value in self.__defaults__[n:]:
            if kw and name in kw:
                value = kw.pop(name)
            elif value is _MISSING:
                raise TypeError(f"{type(self).__name__}: missing {name}")
            elif type(value) is Factory:
                value = value.make()
            values[name] = value
        if kw:
            raise TypeError(f"{type(self).__name__}: unknown fields {sorted(kw)}")
        self.__dict__.update(values)  # not through __setattr__: FrozenRecord may be initialised

    def __repr__(self) -> str:
        body = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__fields__)
        return f"{type(self).__name__}({body})"

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in self.__fields__)

    __hash__ = None  # type: ignore[assignment]  # mutable, like a dataclass with eq


class FrozenRecord(Record):
    """An immutable, hashable Record (like @dataclass(frozen=True))."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self.__dict__:
            raise AttributeError(f"{type(self).__name__} is frozen")
        object.__setattr__(self, name, value)

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(getattr(self, n) for n in self.__fields__))
