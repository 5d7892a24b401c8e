"""The one kind of table every extension point keeps: graders, routers, voting rules, strategies, embedders.

An entry is added once under its name (a second time is a mistake and says so); the table reads like a
read-only dict, in the order entries were added, which is the order the platform lists them in.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

T = TypeVar("T")
Decorated = TypeVar("Decorated", bound=Callable[..., Any])  # what a register_* decorator gives back unchanged


class Registry(Mapping[str, T]):
    """Entries of one extension point by name, in registration order."""

    def __init__(self, kind: str) -> None:
        self.kind = kind  # what an entry is, for messages: "grader", "router", ...
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        """Register ``entry`` under ``name`` and return it; a name already taken raises ValueError."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def registering(self, name: str, entry: Callable[[Any], T]) -> Callable[[Decorated], Decorated]:
        """A decorator that adds ``entry(function)`` under ``name`` and gives the function back unchanged.

        Each extension point's ``register_*`` decorator is this, with what its entries hold besides the function.
        """

        def decorate(function: Decorated) -> Decorated:
            self.add(name, entry(function))
            return function

        return decorate

    def remove(self, name: str) -> T:
        """Take the entry registered under ``name`` out and return it (a test's throw-away entry)."""
        return self._entries.pop(name)

    def find(self, name: str) -> T:
        """Return the entry registered under ``name``; an unknown name raises ValueError that lists the known ones."""
        if name not in self._entries:
            raise ValueError(f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self._entries))}")
        return self._entries[name]

    def copy(self) -> Registry[T]:
        """A registry with the same entries, to add to without changing this one."""
        copied: Registry[T] = Registry(self.kind)
        copied._entries = dict(self._entries)
        return copied

    def __getitem__(self, name: str) -> T:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._entries)!r})"
