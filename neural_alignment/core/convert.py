"""Turn a torch model's layers into aligned layers, in place.

Every module whose type is exactly an ``OpSpec.source`` (``nn.Linear``, ``nn.Conv2d``, what
plugins add), at any depth (Sequential, ModuleDict, ModuleList, attributes), is replaced by
``spec.from_module(module, rule)``: same arguments, W and bias copied, same device and dtype,
so the forward output is unchanged. A module reachable under several names is converted once
and the one aligned layer is put at every name (``exclude``/``overrides`` name all of its
names or none of them).

What it did is a ``Conversion`` (recorded on the returned model, read with ``conversion_of``):
the modules it aligned, the ones excluded, and every weight-bearing module it left on native
backprop, with why: a subclass of a known kind (only exact types convert: a subclass may
compute something else with its weight), or a module holding parameters of two or more
dimensions itself (a user's own ``x @ self.W``), outside every aligned module. Not flagged:
1-d parameters (norms' scales, biases), ``nn.Embedding``/``nn.EmbeddingBag`` (their weight is
looked up, not transported back), excluded modules and what is inside them, and modules whose
class says ``weight_transport = False`` (parameters that enter additively, such as a position
embedding). By default one ``ConversionWarning`` names every module left; ``strict=True``
raises a ``UserError`` instead.

A model converted before keeps its aligned modules (``Conversion.already``: they are not on
backprop and are not flagged); asking for another rule than theirs is a ``UserError`` raised
before anything changes (their B would otherwise keep training by the old rule unnoticed).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from neural_alignment.core.attention import AlignedMultiheadAttention
from neural_alignment.core.errors import UserError, did_you_mean
from neural_alignment.core.layers import AlignedLayer

__all__ = ["Conversion", "ConversionWarning", "conversion_of", "convert_modules"]

NO_WEIGHT_TRANSPORT = (nn.Embedding, nn.EmbeddingBag)
"""Module kinds with 2-d weights that take no weight transport (their weight is looked up)."""
_RECORD = "_alignment_conversion"


class ConversionWarning(UserWarning):
    """``convert`` left weight-bearing modules on native backprop."""


@dataclass(frozen=True)
class Conversion:
    """What one conversion did: ``aligned`` and ``excluded`` as (path, type name), ``left``
    as (path, type name, why) and ``already`` (aligned by an earlier conversion) as (path, type
    name, rule name), in module order; the path of the model itself is ``""``."""

    rule: str
    aligned: tuple[tuple[str, str], ...]
    excluded: tuple[tuple[str, str], ...]
    left: tuple[tuple[str, str, str], ...]
    already: tuple[tuple[str, str, str], ...] = ()

    def left_text(self) -> str:
        """Each module left on backprop as ``path (type: why)``, separated by ``; ``."""
        return "; ".join(f"{path or '<model>'} ({kind}: {why})" for path, kind, why in self.left)

    def left_message(self) -> str:
        """The one line that names every module left on native backprop."""
        return "left on native backprop (weight transport): " + self.left_text()

    def summary(self) -> str:
        """One line per part: what became aligned (counts by kind), what was excluded, what was left."""
        counts: dict[str, int] = {}
        for _, kind in self.aligned:
            counts[kind] = counts.get(kind, 0) + 1
        kinds = ", ".join(f"{n} {kind}" for kind, n in counts.items()) or "nothing"
        lines = [f"converted to rule {self.rule!r}: {kinds}"]
        if self.already:
            already = (f"{path or '<model>'} ({kind})" for path, kind, _ in self.already)
            lines.append("already aligned: " + ", ".join(already))
        if self.excluded:
            lines.append("excluded (native backprop): " + ", ".join(path for path, _ in self.excluded))
        if self.left:
            lines.append(self.left_message())
        return "\n".join(lines)


def conversion_of(model: nn.Module) -> Conversion | None:
    """The ``Conversion`` recorded by the conversion that returned ``model`` (None if none did)."""
    return model.__dict__.get(_RECORD)


def convert_modules(
    model: nn.Module,
    rule: Any,
    op_specs: Iterable[Any] | Mapping[str, Any],
    exclude: Iterable[str] = (),
    overrides: Mapping[str, Any] | None = None,
    strict: bool = False,
    warn: bool = True,
) -> nn.Module:
    """Replace every convertible module of ``model`` by its aligned version; returns ``model``,
    its ``Conversion`` recorded on it (``conversion_of``).

    ``rule``: the ``Rule`` for every layer; ``overrides``: {qualified name: Rule} for some layers;
    ``exclude``: qualified names left as they are (native backprop). ``op_specs``: ``OpSpec``
    objects (or a mapping whose values are). When ``model`` itself is convertible the aligned
    module is returned instead (it cannot be replaced in place). Weight-bearing modules left on
    backprop (module docstring): a ``UserError`` with ``strict``, else one ``ConversionWarning``
    when ``warn``.
    """
    given: Iterable[Any] = op_specs.values() if isinstance(op_specs, Mapping) else op_specs
    specs = {spec.source: spec for spec in given}
    already = _already_aligned(model)
    rule_name = getattr(rule, "name", str(rule))
    other = [f"{path or '<model>'} ({kind}, rule {name!r})" for path, kind, name in already if name != rule_name]
    if other:
        raise UserError(
            f"convert(rule={rule_name!r}): the model is already aligned with another rule: {'; '.join(other)}; "
            "convert the original torch model instead (a converted layer keeps its rule)"
        )
    exclude = set(exclude)
    overrides = dict(overrides or {})
    names_of: dict[int, list[str]] = {}  # every name of each convertible module, in module order
    convertible = []
    for name, m in model.named_modules(remove_duplicate=False):
        if type(m) in specs:
            names_of.setdefault(id(m), []).append(name)
            convertible.append(name)
    _check_names(exclude, overrides, convertible, [names for names in names_of.values() if len(names) > 1])

    converted: dict[int, nn.Module] = {}
    aligned, excluded = [], []
    result = model
    for name, module in list(model.named_modules(remove_duplicate=False)):
        if type(module) not in specs:
            continue
        if name in exclude:
            excluded.append((name, type(module).__name__))
            continue
        if id(module) not in converted:
            converted[id(module)] = specs[type(module)].from_module(module, overrides.get(name, rule))
        aligned.append((name, type(module).__name__))
        if name == "":
            result = converted[id(module)]
            break
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, converted[id(module)])
    done = {id(m) for m in converted.values()} | {id(result.get_submodule(path)) for path, _, _ in already}
    skipped = {path for path, _ in excluded}
    report = Conversion(
        rule_name,
        tuple(aligned),
        tuple(excluded),
        tuple(_left_on_backprop(result, done, skipped, tuple(specs))),
        tuple(already),
    )
    result.__dict__[_RECORD] = report
    if report.left and strict:
        raise UserError(
            f"convert(strict=True): {len(report.left)} weight-bearing module(s) would stay on native backprop: "
            f"{report.left_text()}; register an op for their kind, or pass strict=False"
        )
    if report.left and warn:
        warnings.warn(
            f"convert left {len(report.left)} weight-bearing module(s) on native backprop: {report.left_text()}",
            ConversionWarning,
            stacklevel=3,
        )
    return result


def _inside(name: str, subtrees: Iterable[str]) -> bool:
    """Whether the module path ``name`` is one of ``subtrees`` or below one ("" is the whole model)."""
    return any(p == "" or name == p or name.startswith(p + ".") for p in subtrees)


def _already_aligned(model: nn.Module) -> list[tuple[str, str, str]]:
    """(path, type name, rule name) of each outermost module an earlier conversion aligned."""
    found: list[tuple[str, str, str]] = []
    for name, m in model.named_modules():
        if _inside(name, (path for path, _, _ in found)):
            continue
        if isinstance(m, AlignedLayer | AlignedMultiheadAttention):
            layer = m if isinstance(m, AlignedLayer) else m.out_proj
            found.append((name, type(m).__name__, layer.rule.name))
    return found


def _left_on_backprop(model: nn.Module, aligned: set[int], excluded: set[str], known: tuple[type, ...]):
    """(path, type name, why) of each weight-bearing module outside the aligned and excluded ones."""
    inside: list[str] = []  # prefixes of the aligned and excluded subtrees
    for name, m in model.named_modules():
        if _inside(name, inside):
            continue
        if id(m) in aligned or name in excluded:
            inside.append(name)
            continue
        kind = type(m).__name__
        if isinstance(m, known):
            base = next(k for k in known if isinstance(m, k))
            yield name, kind, f"a subclass of {base.__name__} that convert does not know"
            continue
        if isinstance(m, NO_WEIGHT_TRANSPORT) or not getattr(type(m), "weight_transport", True):
            continue
        own = [n for n, p in m.named_parameters(recurse=False) if p.dim() >= 2]
        if own:
            yield name, kind, f"holds its own weight parameter(s) {', '.join(own)}"


def _check_names(
    exclude: set[str], overrides: Mapping[str, Any], convertible: list[str], shared: list[list[str]]
) -> None:
    """Every excluded or overridden name must be a convertible layer, and not both at once; the
    names of one ``shared`` module are excluded (or overridden) all together or not at all
    (excluding some names only would untie the copies; an override of some only was ignored)."""
    known = set(convertible)
    for what, given in (("exclude", exclude), ("overrides", overrides)):
        for name in given:
            if name not in known:
                raise UserError(
                    f"{what}: {name!r} is not a convertible layer of this model.{did_you_mean(name, convertible)} "
                    f"Convertible layers: {', '.join(convertible) or '(none)'}"
                )
    both = sorted(exclude & set(overrides))
    if both:
        raise UserError(f"layer(s) {', '.join(map(repr, both))} are both excluded and given an override rule")
    for names in shared:
        for what, chosen in (("exclude", exclude), ("overrides", overrides)):
            picked = [name for name in names if name in chosen]
            if picked and len(picked) < len(names):
                raise UserError(
                    f"{what}: {', '.join(map(repr, picked))} is one module shared with "
                    f"{', '.join(repr(n) for n in names if n not in chosen)}; name all of them or none"
                )
