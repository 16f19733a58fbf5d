"""Name -> entry registries (big_vision's ``pp/registry.py``, timm's model registry).

A recipe names an encoder, a reduction, a dataset; the planner names a fine-tune schedule. Each name
is looked up in one registry, so the recipe's allowed values, the planner's search space and the help
text all come from the same entries. Registering a name twice, or asking for a name nobody
registered, is an error naming the value and the known names.
"""
from __future__ import annotations

from typing import Generic, Iterator, Optional, TypeVar

from clipa.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """Entries (objects with a ``name``) in registration order; ``what`` names them in errors;
    ``aliases`` map other names to registered ones (CLIPA-v2's "G/14" is OpenCLIP's "bigG/14")."""

    def __init__(self, what: str, aliases: Optional[dict[str, str]] = None):
        self.what = what
        self.aliases = aliases or {}
        self._entries: dict[str, T] = {}

    def register(self, entry: T) -> T:
        name = entry.name
        if name in self._entries:
            raise ValueError(f"{self.what} {name!r} registered twice; known: {', '.join(self._entries)}")
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> T:
        """The entry called ``name`` (or an alias of it), or a UserError listing the known names."""
        key = self.aliases.get(name, name)
        if key not in self._entries:
            raise UserError(f"unknown {self.what} {name!r}; known: {', '.join([*self._entries, *self.aliases])}")
        return self._entries[key]

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def help(self) -> str:
        """The known names for a help text: 'a | b | c'."""
        return " | ".join(self._entries)

    def __iter__(self) -> Iterator[T]:
        return iter(self._entries.values())

    def __contains__(self, name: object) -> bool:
        return name in self._entries
