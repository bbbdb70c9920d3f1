"""A typed catalog: the named things of one kind, each with the plugin it came from."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from neural_alignment.core.errors import UserError, did_you_mean


class RegistryError(UserError):
    """A name clash or an unknown name. Its message is one line meant for the user."""


class DuplicateNameError(RegistryError):
    """Two plugins registered the same name in one catalog."""


class UnknownNameError(RegistryError, KeyError):
    """A name that no plugin registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


@dataclass(frozen=True)
class Entry:
    """One registered thing."""

    name: str
    obj: Any
    plugin: str
    description: str


def natural_key(text: str) -> list:
    """Sort key that orders 'resnet18' before 'resnet101' (numbers compared as numbers)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def first_docstring_line(obj: Any) -> str:
    """The first non-blank line of ``obj.doc`` when that is a non-empty string (a ``RuleSpec``'s
    own description; its ``__doc__`` would be the class's), else of ``obj.__doc__``."""
    doc = getattr(obj, "doc", None)
    if not (isinstance(doc, str) and doc.strip()):
        doc = getattr(obj, "__doc__", None) or ""
    for line in doc.strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


class Catalog:
    """Named entries of one kind (``rules``, ``datasets``...)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def add(self, name: str, obj: Any, plugin: str, description: str | None = None) -> None:
        if not isinstance(name, str) or not name:
            raise RegistryError(f"plugin {plugin!r} registered a {self.kind} entry with an empty or non-string name")
        taken = self._entries.get(name)
        if taken is not None:
            raise DuplicateNameError(
                f"{self.kind} name {name!r} is registered by both plugin {taken.plugin!r} and plugin {plugin!r}"
            )
        self._entries[name] = Entry(name, obj, plugin, description or first_docstring_line(obj))

    def discard(self, name: str) -> None:
        """Leave ``name`` out (an entry found invalid once every plugin registered)."""
        self._entries.pop(name, None)

    def entry(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self.unknown_message(name)) from None

    def get(self, name: str) -> Any:
        return self.entry(name).obj

    def unknown_message(self, name: str) -> str:
        known = self.names()
        hint = did_you_mean(name, known, cutoff=0.5)
        listed = ", ".join(known) if known else "(none registered)"
        return f"unknown {self.kind[:-1] if self.kind.endswith('s') else self.kind} {name!r}.{hint} Known: {listed}"

    def names(self, pattern: str | None = None) -> list[str]:
        names = [n for n in self._entries if pattern is None or fnmatch.fnmatchcase(n, pattern)]
        return sorted(names, key=natural_key)

    def entries(self, pattern: str | None = None) -> list[Entry]:
        return [self._entries[n] for n in self.names(pattern)]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
