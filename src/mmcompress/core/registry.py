"""Allow-list registries: things are loaded by name only if they were registered."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from mmcompress.errors import ConfigError, unknown_name

T = TypeVar("T")


class Registry(Generic[T]):
    """A named allow-list.

    Example:
        >>> passes = Registry[type]("pass")
        >>> @passes.register("evaluate")
        ... class EvaluatePass: ...
        >>> passes.get("evaluate") is EvaluatePass
        True
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = item
            return item

        return add

    def get(self, name: str) -> T:
        if name not in self._items:
            raise ConfigError(unknown_name(self.kind, name, list(self._items)))
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def items(self) -> list[tuple[str, T]]:
        return sorted(self._items.items())

    def __contains__(self, name: object) -> bool:
        return name in self._items
