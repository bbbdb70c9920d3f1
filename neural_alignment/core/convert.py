"""Turn a torch model's layers into aligned layers, in place.

Every module whose type is exactly an ``OpSpec.source`` (``nn.Linear``, ``nn.Conv2d``, what
plugins add), at any depth (Sequential, ModuleDict, ModuleList, attributes), is replaced by
``spec.from_module(module, rule)``: same arguments, W and bias copied, same device and dtype,
so the forward output is unchanged. A module reachable under several names is converted once
and the one aligned layer is put at every name (``exclude``/``overrides`` name all of its
names or none of them).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from torch import nn

from neural_alignment.core.errors import UserError, did_you_mean

__all__ = ["convert_modules"]


def convert_modules(
    model: nn.Module,
    rule: Any,
    op_specs: Iterable[Any] | Mapping[str, Any],
    exclude: Iterable[str] = (),
    overrides: Mapping[str, Any] | None = None,
) -> nn.Module:
    """Replace every convertible module of ``model`` by its aligned version; returns ``model``.

    ``rule``: the ``Rule`` for every layer; ``overrides``: {qualified name: Rule} for some layers;
    ``exclude``: qualified names left as they are (native backprop). ``op_specs``: ``OpSpec``
    objects (or a mapping whose values are). When ``model`` itself is convertible the aligned
    module is returned instead (it cannot be replaced in place).
    """
    given: Iterable[Any] = op_specs.values() if isinstance(op_specs, Mapping) else op_specs
    specs = {spec.source: spec for spec in given}
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
    for name, module in list(model.named_modules(remove_duplicate=False)):
        if type(module) not in specs or name in exclude:
            continue
        if id(module) not in converted:
            converted[id(module)] = specs[type(module)].from_module(module, overrides.get(name, rule))
        if name == "":
            return converted[id(module)]
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, converted[id(module)])
    return model


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
