"""The grid of a comparison: every (rule, varied value, seed) as one run.

``nalign compare NAME --rules a,b --seeds K --vary key=v1,v2`` trains ``NAME`` once per
combination. Run ``(rule, value, k)`` gets the overrides ``rule.name=<rule>``, ``key=<value>``
and ``train.seed=<seed0 + k>`` (``seed0``: the recipe's ``train.seed`` after the command-line
overrides) and the run folder::

    <out>/<rule>[/<key>=<value>][/seed<seed>]

(the value part only with ``--vary``, the seed part only with ``--seeds`` above 1), so a plain
``compare`` keeps one folder per rule and an interrupted grid finds its finished runs again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from neural_alignment.core.errors import UserError
from neural_alignment.grids.executor import RunSpec

SEED_KEY = "train.seed"


@dataclass(frozen=True)
class Vary:
    """One recipe key and the values a grid takes it through (each the text of a ``key=value`` override)."""

    key: str
    values: tuple[str, ...]


@dataclass(frozen=True)
class GridPoint:
    """One cell of the grid: a rule, the varied value (``None`` without ``--vary``) and the seed."""

    rule: str
    value: str | None
    seed: int


def split_top_level(text: str, sep: str = ",") -> list[str]:
    """``text`` split at ``sep`` outside brackets and braces: ``"[8,8],[16]"`` -> ``["[8,8]", "[16]"]``."""
    current: list[str]
    parts, depth, current = [], 0, []
    for char in text:
        if char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        if char == sep and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [part.strip() for part in parts]


def parse_vary(text: str) -> Vary:
    """``key=v1,v2,...`` (a value may be a list, ``[8,16]``; commas inside brackets do not split)."""
    key, sep, values = text.partition("=")
    key = key.strip()
    parsed = tuple(split_top_level(values)) if sep else ()
    if not key or not parsed or any(not v for v in parsed):
        raise UserError(f"--vary {text!r} must look like key=v1,v2,... e.g. --vary optim.task.lr=0.01,0.1")
    if key in (SEED_KEY, "rule.name"):
        raise UserError(f"--vary {key} is what --seeds / --rules set; vary another key")
    if len(set(parsed)) != len(parsed):
        raise UserError(f"--vary {text!r} repeats a value")
    return Vary(key, parsed)


def grid_points(rules: Sequence[str], seeds: Sequence[int], vary: Vary | None) -> list[GridPoint]:
    """Every (rule, value, seed), rules outermost, seeds innermost."""
    values: Sequence[str | None] = vary.values if vary else (None,)
    return [GridPoint(rule, value, seed) for rule in rules for value in values for seed in seeds]


def point_overrides(point: GridPoint, vary: Vary | None) -> list[str]:
    """The overrides that make the recipe this grid point (after the user's own)."""
    extra = [f"rule.name={point.rule}", f"{SEED_KEY}={point.seed}"]
    return extra + ([f"{vary.key}={point.value}"] if vary else [])


def point_dir(out: Path, point: GridPoint, vary: Vary | None, seeded: bool) -> Path:
    """``<out>/<rule>[/<key>=<value>][/seed<seed>]``; characters a folder name cannot hold become ``_``."""
    path = Path(out) / point.rule
    if vary:
        path = path / safe_name(f"{vary.key}={point.value}")
    return path / f"seed{point.seed}" if seeded else path


def safe_name(text: str) -> str:
    """A folder name for ``text``: path separators and spaces replaced by ``_``."""
    return "".join("_" if c in '/\\ :*?"<>|' else c for c in text)


def grid_specs(
    name: str, overrides: Sequence[str], points: Sequence[GridPoint], vary: Vary | None, out: Path, seeded: bool
) -> list[RunSpec]:
    """One :class:`RunSpec` per point, in the order of ``points``."""
    return [RunSpec(name, (*overrides, *point_overrides(p, vary)), point_dir(out, p, vary, seeded)) for p in points]
