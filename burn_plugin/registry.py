"""The one registry class: defenses, poison detectors, attacks, datasets and models each keep their
entries in a :class:`Registry` (``register``, ``get``, ``names``), so that an unknown name is the same
one-line :class:`~burn_plugin.errors.UnknownNameError` everywhere, listing the choices.

Standalone on purpose (it imports only :mod:`burn_plugin.errors`): every layer may use it."""
from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from .errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one kind (``kind`` names it in errors: "attack", "defense method" ...).

    ``order`` sorts :meth:`names` (default: alphabetical; ``sort=False``: in the order registered).
    ``register(name)`` is a decorator;
    ``register(name, obj)`` registers ``obj`` directly; both return ``obj``.
    """

    def __init__(self, kind: str, *, order: Callable[[str], object] | None = None, sort: bool = True):
        self.kind = kind
        self._order = order
        self._sort = sort
        self.entries: dict[str, T] = {}

    def register(self, name: str, obj: T | None = None):
        if obj is not None:
            self.entries[name] = obj
            return obj

        def deco(o: T) -> T:
            self.entries[name] = o
            return o
        return deco

    def get(self, name: str) -> T:
        try:
            return self.entries[name]
        except (KeyError, TypeError):
            raise UnknownNameError(f"unknown {self.kind} {str(name)!r:.80}; choose one of: "
                                   f"{', '.join(self.names())}") from None

    def names(self) -> list[str]:
        return sorted(self.entries, key=self._order) if self._sort else list(self.entries)

    def values(self) -> list[T]:
        return [self.entries[n] for n in self.names()]

    __getitem__ = get

    def pop(self, name: str, *default):
        """Remove ``name`` (a test's or a benchmark's planted entry) and return it."""
        return self.entries.pop(name, *default)

    def __contains__(self, name: object) -> bool:
        return name in self.entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.entries)
