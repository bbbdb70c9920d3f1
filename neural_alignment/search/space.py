"""A recipe's ``search.space``: hyperopt distributions over recipe keys, and what a sample sets.

Each entry of ``search.space`` is one of:

``KEY: {dist: uniform, low: a, high: b}``
    KEY (a dotted recipe key, e.g. ``rule.noise_std``) uniform in [a, b].
``KEY: {dist: loguniform, low: a, high: b}``
    log KEY uniform in [log a, log b] (``low``/``high`` are given as values, not logs).
``KEY: {dist: quniform, low: a, high: b, q: q}``
    round(uniform(a, b) / q) * q; a whole number when ``a`` and ``q`` are.
``KEY: {dist: choice, options: [v1, v2, ...]}``
    one of the values.
``KEY: {..., times: OTHER}``
    the recipe gets (the sample) * (OTHER's value): a ratio searched on its own scale, as the
    appendix's alpha/beta (``rule.weights.amp: {dist: uniform, low: 0.1, high: 200,
    times: rule.weights.decay}`` gives amp = (alpha/beta) * beta).
``LABEL: {dist: choice, options: [{KEY: value, ...}, ...]}``
    a conditional (tree) choice: LABEL has no dot, each option is a branch, a mapping of recipe
    keys to values or to distributions of their own (sampled only when the branch is chosen).

A sample of the space (a nested dict, as hyperopt or Ray Tune hands it over) becomes
:class:`Sample`: ``values`` (what was drawn, by key or label: a branch by its index, a ``times``
ratio as ``KEY/OTHER``; what a search records and ranks) and ``overrides`` (recipe key -> value,
what the trial runs with).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from neural_alignment.core.errors import UserError

DISTRIBUTIONS: dict[str, tuple[str, ...]] = {
    "uniform": ("low", "high"),
    "loguniform": ("low", "high"),
    "quniform": ("low", "high", "q"),
    "choice": ("options",),
}
"""Each distribution's required keys (besides ``dist``; ``times`` is allowed on every one)."""

BRANCH = "__branch__"
"""Key of a conditional branch's index inside a sample."""


@dataclass(frozen=True)
class Sample:
    """One point of a space: ``values`` (key or label -> the chosen value) and ``overrides`` (recipe key -> value)."""

    values: dict[str, Any]
    overrides: dict[str, Any]


def is_distribution(value: Any) -> bool:
    return isinstance(value, Mapping) and "dist" in value


def is_branch_label(key: str) -> bool:
    """A key without a dot names a conditional choice (a recipe key always has a section)."""
    return "." not in key


def check_distribution(key: str, spec: Mapping, where: str) -> None:
    """A ``UserError`` naming ``where``.``key`` unless ``spec`` is a valid distribution."""
    name = spec.get("dist")
    if name not in DISTRIBUTIONS:
        raise UserError(f"{where}.{key}: unknown dist {name!r}; valid: {', '.join(DISTRIBUTIONS)}")
    required = DISTRIBUTIONS[name]
    unknown = sorted(set(spec) - {"dist", "times", *required})
    missing = [k for k in required if k not in spec]
    if unknown or missing:
        raise UserError(
            f"{where}.{key}: dist {name} takes {', '.join(required)} (and times); "
            f"missing {missing or 'none'}, unknown {unknown or 'none'}"
        )
    if name == "choice":
        if not isinstance(spec["options"], (list, tuple)) or not spec["options"]:
            raise UserError(f"{where}.{key}: choice needs a non-empty list of options")
        return
    low, high = spec["low"], spec["high"]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) or not low < high:
        raise UserError(f"{where}.{key}: needs numbers low < high, got low={low!r}, high={high!r}")
    if name == "loguniform" and low <= 0:
        raise UserError(f"{where}.{key}: loguniform needs low > 0, got {low!r}")
    if name == "quniform" and not spec["q"] > 0:
        raise UserError(f"{where}.{key}: quniform needs q > 0, got {spec['q']!r}")


def hyperopt_space(space: Mapping[str, Any], where: str = "search.space", prefix: str = "") -> dict[str, Any]:
    """``search.space`` as a hyperopt space (a dict of ``hp`` expressions; labels are the keys,
    a branch's entries labelled ``LABEL/INDEX/KEY``). Raises ``UserError`` naming a bad entry."""
    from hyperopt import hp

    if not isinstance(space, Mapping) or not space:
        raise UserError(f"{where} must be a non-empty mapping of recipe keys to distributions")
    out = {}
    for key, spec in space.items():
        label = f"{prefix}{key}"
        if not is_distribution(spec):
            if prefix:  # a branch may fix a key to a value
                out[key] = spec
                continue
            raise UserError(f"{where}.{key}: needs a distribution, e.g. {{dist: uniform, low: 0, high: 1}}")
        check_distribution(key, spec, where)
        name = spec["dist"]
        if is_branch_label(key):
            if name != "choice" or not all(isinstance(o, Mapping) for o in spec["options"]):
                raise UserError(
                    f"{where}.{key}: a key without a dot is a conditional choice: "
                    "dist choice with options that are mappings of recipe keys"
                )
            out[key] = hp.choice(
                label,
                [
                    {BRANCH: i, **hyperopt_space(option, f"{where}.{key}.options[{i}]", f"{label}/{i}/")}
                    for i, option in enumerate(spec["options"])
                ],
            )
        elif name == "uniform":
            out[key] = hp.uniform(label, spec["low"], spec["high"])
        elif name == "loguniform":
            out[key] = hp.loguniform(label, math.log(spec["low"]), math.log(spec["high"]))
        elif name == "quniform":
            out[key] = hp.quniform(label, spec["low"], spec["high"], spec["q"])
        else:
            out[key] = hp.choice(label, list(spec["options"]))
    return out


def plain(value: Any) -> Any:
    """``value`` with numpy scalars made Python numbers (recorded as JSON, passed as overrides)."""
    if hasattr(value, "item") and not isinstance(value, (list, dict)):
        return value.item()
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def resolve(space: Mapping[str, Any], point: Mapping[str, Any]) -> Sample:
    """The :class:`Sample` of ``point`` (a sample of :func:`hyperopt_space` of ``space``)."""
    values: dict[str, Any] = {}
    raw: dict[str, Any] = {}
    times: dict[str, str] = {}

    def visit(entries: Mapping[str, Any], chosen: Mapping[str, Any]) -> None:
        for key, spec in entries.items():
            value = plain(chosen[key])
            if is_distribution(spec) and is_branch_label(key):
                index = value[BRANCH]
                values[key] = index
                visit(spec["options"][index], value)
                continue
            if is_distribution(spec):
                if spec["dist"] == "quniform" and float(spec["low"]).is_integer() and float(spec["q"]).is_integer():
                    value = round(value)
                if "times" in spec:
                    times[key] = spec["times"]
                values[f"{key}/{spec['times']}" if "times" in spec else key] = value
            raw[key] = value

    visit(space, point)
    overrides = dict(raw)
    for key, other in times.items():
        if other not in raw:
            raise UserError(f"search.space.{key}: times {other!r} is not a key of the space")
        overrides[key] = raw[key] * raw[other]
    return Sample(values, overrides)


def middle(spec: Mapping[str, Any]) -> Any:
    """A value inside ``spec``'s range: the first option, the midpoint (uniform, quniform) or the
    geometric midpoint (loguniform)."""
    if spec["dist"] == "choice":
        return spec["options"][0]
    if spec["dist"] == "loguniform":
        return math.sqrt(spec["low"] * spec["high"])
    return (spec["low"] + spec["high"]) / 2


def representative_points(space: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Points of ``space`` (as a hyperopt sample is shaped) that together visit every branch of every
    conditional choice, each distribution at :func:`middle`: the first takes every branch's first
    option, each further one changes one branch. What a check of the keys a space sets resolves."""

    def point(entries: Mapping[str, Any], picks: Mapping[str, int], prefix: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, spec in entries.items():
            label = f"{prefix}{key}"
            if is_distribution(spec) and is_branch_label(key):
                index = picks.get(label, 0)
                out[key] = {BRANCH: index, **point(spec["options"][index], picks, f"{label}/{index}/")}
            elif is_distribution(spec):
                out[key] = middle(spec)
            else:
                out[key] = spec
        return out

    def branches(entries: Mapping[str, Any], prefix: str) -> list[tuple[str, int]]:
        found = []
        for key, spec in entries.items():
            if is_distribution(spec) and is_branch_label(key):
                label = f"{prefix}{key}"
                for index, option in enumerate(spec["options"]):
                    found += [(label, index)] * (index > 0) + branches(option, f"{label}/{index}/")
        return found

    return [point(space, {}, "")] + [point(space, {label: index}, "") for label, index in branches(space, "")]


def categorical_keys(space: Mapping[str, Any]) -> list[str]:
    """The keys and labels of every ``choice`` in ``space``, branches' own choices included."""
    keys = []
    for key, spec in space.items():
        if is_distribution(spec) and spec["dist"] == "choice":
            keys.append(key)
            if is_branch_label(key):
                for option in spec["options"]:
                    keys.extend(k for k in categorical_keys(option) if k not in keys)
    return keys


def continuous_keys(space: Mapping[str, Any]) -> dict[str, bool]:
    """The value keys (as :class:`Sample` ``values`` names them: ``KEY`` or ``KEY/OTHER`` for a
    ``times`` ratio) of every uniform, loguniform or quniform entry, branches' included, each with
    whether it is searched on a log scale (loguniform)."""
    keys: dict[str, bool] = {}
    for key, spec in space.items():
        if not is_distribution(spec):
            continue
        if spec["dist"] != "choice":
            keys[f"{key}/{spec['times']}" if "times" in spec else key] = spec["dist"] == "loguniform"
        elif is_branch_label(key):
            for option in spec["options"]:
                keys.update({k: v for k, v in continuous_keys(option).items() if k not in keys})
    return keys
