"""What a registered entry must be, checked while the registry is built.

- A name holds letters, digits, ``_`` and ``-`` and starts with a letter or digit
  (``NAME_PATTERN``): names are typed in ``rule.name=kp``, ``--rules bp,kp`` and
  ``by_rule.<name>.key=value``, where ``=``, ``,``, ``.`` or a space would split them.
- A primitive's ``name`` and a rule's (``RuleSpec.name``) equal the name they are registered
  under; a primitive's ``needs`` is a set of the categories in ``core.primitives.NEEDS``.
- Every primitive a rule weighs is registered (:func:`rule_problems`, once all are in).

``Registry`` raises a problem of a built-in plugin as a ``RegistryError``; for a third-party
plugin it warns, naming the plugin, and leaves the entry out, so the rest still load.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from neural_alignment.core.errors import did_you_mean
from neural_alignment.core.primitives import NEEDS
from neural_alignment.registry.catalog import Catalog

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*\Z")


def entry_problem(kind: str, name: Any, obj: Any) -> str | None:
    """Why ``obj`` cannot be registered as ``name`` in catalog ``kind``, or ``None``."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        return (
            f"{kind} name {name!r} is not a valid name: letters, digits, '_' and '-', starting with a letter or digit"
        )
    if kind in ("primitives", "rules"):
        own = getattr(obj, "name", None)
        if own != name:
            what = "Primitive.name" if kind == "primitives" else "RuleSpec.name"
            return f"{kind[:-1]} registered as {name!r} has {what} {own!r}; register it under its own name"
    if kind == "primitives":
        return _needs_problem(name, getattr(obj, "needs", None))
    return None


def _needs_problem(name: str, needs: Any) -> str | None:
    if not isinstance(needs, (set, frozenset)):
        return (
            f"primitive {name!r} has needs={needs!r}: it must be a set of "
            f"{', '.join(sorted(NEEDS))}, e.g. frozenset({{'weights'}})"
        )
    unknown = sorted(str(need) for need in needs if need not in NEEDS)
    if unknown:
        return (
            f"primitive {name!r} needs unknown category {unknown[0]!r}.{did_you_mean(unknown[0], NEEDS)} "
            f"Valid: {', '.join(sorted(NEEDS))}"
        )
    return None


def rule_problems(rules: Catalog, primitives: Catalog) -> Iterator[tuple[str, str, str]]:
    """(plugin, rule, problem) for each registered rule that weighs a primitive nobody registered."""
    known = primitives.names()
    for entry in rules.entries():
        for primitive in getattr(entry.obj, "weights", {}) or {}:
            if primitive not in primitives:
                closest = did_you_mean(primitive, known, cutoff=0.0)
                yield (
                    entry.plugin,
                    entry.name,
                    (
                        f"rule {entry.name!r} weighs unknown primitive {primitive!r}."
                        f"{closest} Known primitives: {', '.join(known) or '(none)'}"
                    ),
                )
                break
