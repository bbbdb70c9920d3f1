"""The public functions that take names: they resolve names through the registry, then
delegate to the mechanisms in ``core``. Everything here is re-exported by ``neural_alignment``.

The functions that resolve names take ``registry=``: the process-wide registry by default
(built-ins and installed plugins), or one a plugin's tests build in process,
``Registry(autoload=False, extra_plugins=[my_plugin])``, without installing the plugin.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from neural_alignment.core import attention, layers
from neural_alignment.core.alignment import add_weight_gradients, alignment_loss, set_epoch
from neural_alignment.core.convert import Conversion, ConversionWarning, conversion_of, convert_modules
from neural_alignment.core.layers import aligned_layers
from neural_alignment.core.metrics import gradient_angle, layer_metrics
from neural_alignment.core.rules import Rule, RuleSpec, build_rule
from neural_alignment.registry import Registry, get_registry

__all__ = [
    "AlignedConv1d",
    "AlignedConv2d",
    "AlignedConv3d",
    "AlignedConvTranspose1d",
    "AlignedConvTranspose2d",
    "AlignedConvTranspose3d",
    "AlignedLinear",
    "AlignedMultiheadAttention",
    "Conversion",
    "ConversionWarning",
    "add_weight_gradients",
    "aligned_layers",
    "alignment_loss",
    "conversion_of",
    "convert",
    "get_rule",
    "gradient_angle",
    "layer_metrics",
    "list_rules",
    "make_rule",
    "set_epoch",
]


def get_rule(rule: str | Rule = "bp", *, registry: Registry | None = None, **overrides: Any) -> Rule:
    """The rule registered as ``rule``, with ``overrides`` applied.

    ``get_rule("sa", weights={"self": 1e-3})`` merges into the default weights; flags, noise and
    schedules are overridden by keyword. A ``Rule`` object is returned as it is (no overrides allowed).
    """
    if isinstance(rule, Rule):
        if overrides:
            raise TypeError("overrides apply to a rule name, not to a Rule object")
        return rule
    registry = registry or get_registry()
    spec: RuleSpec = registry.get("rules", rule)
    return build_rule(spec, registry.catalog("primitives"), **overrides)


def make_rule(
    weights: Mapping[str, float], name: str = "custom", *, registry: Registry | None = None, **options: Any
) -> Rule:
    """A rule from any registered primitives, with no class of its own: R = sum_p weights[p] * p."""
    spec = RuleSpec(name=name, weights={}, doc="Composed from registered primitives.")
    return build_rule(spec, (registry or get_registry()).catalog("primitives"), weights=dict(weights), **options)


def list_rules(pattern: str | None = None, *, registry: Registry | None = None) -> list[str]:
    """Names of the registered rules, natural order, optionally filtered by a glob."""
    return (registry or get_registry()).catalog("rules").names(pattern)


def convert(
    model: nn.Module,
    rule: str | Rule = "kp",
    exclude: tuple[str, ...] | list[str] = (),
    overrides: Mapping[str, str | Rule] | None = None,
    strict: bool = False,
    warn: bool = True,
    registry: Registry | None = None,
    **rule_options: Any,
) -> nn.Module:
    """Replace every module kind that has a registered aligned op (``nn.Linear``, every
    ``nn.Conv*``/``nn.ConvTranspose*``, ``nn.MultiheadAttention`` and what plugins add) by its
    aligned version, weights copied, in place; returns ``model`` (or, when ``model`` itself is
    such a layer, its aligned version). ``conversion_of(model)`` then says what was aligned,
    excluded and left.

    ``exclude`` names layers (qualified names) that stay on native backprop; ``overrides`` maps
    layer names to another rule. A weight-bearing module convert cannot align (a subclass of a
    known kind, a module holding its own weight parameters) gets one ``ConversionWarning``
    naming each (``warn=False``: none); ``strict=True`` raises a ``UserError`` for any.
    """
    registry = registry or get_registry()
    op_specs = [registry.get("ops", name) for name in registry.catalog("ops").names()]
    per_layer = {name: get_rule(r, registry=registry) for name, r in (overrides or {}).items()}
    return convert_modules(
        model,
        get_rule(rule, registry=registry, **rule_options),
        op_specs,
        exclude=tuple(exclude),
        overrides=per_layer,
        strict=strict,
        warn=warn,
    )


class _RuleByName(nn.Module):
    """Mixed in before an aligned layer class: its ``rule`` may be a registered name or a Rule."""

    def __init__(self, *args: Any, rule: str | Rule = "bp", **kwargs: Any):
        super().__init__(*args, rule=get_rule(rule), **kwargs)


class AlignedLinear(_RuleByName, layers.AlignedLinear):
    """``nn.Linear`` with a backward kernel B trained by ``rule`` (a name or a Rule)."""


class AlignedConv1d(_RuleByName, layers.AlignedConv1d):
    """``nn.Conv1d`` with a backward kernel B trained by ``rule`` (a name or a Rule)."""


class AlignedConv2d(_RuleByName, layers.AlignedConv2d):
    """``nn.Conv2d`` with a backward kernel B trained by ``rule`` (a name or a Rule)."""


class AlignedConv3d(_RuleByName, layers.AlignedConv3d):
    """``nn.Conv3d`` with a backward kernel B trained by ``rule`` (a name or a Rule)."""


class AlignedConvTranspose1d(_RuleByName, layers.AlignedConvTranspose1d):
    """``nn.ConvTranspose1d`` with a backward kernel B trained by ``rule`` (a name or a Rule)."""


class AlignedConvTranspose2d(_RuleByName, layers.AlignedConvTranspose2d):
    """``nn.ConvTranspose2d`` with a backward kernel B trained by ``rule`` (a name or a Rule)."""


class AlignedConvTranspose3d(_RuleByName, layers.AlignedConvTranspose3d):
    """``nn.ConvTranspose3d`` with a backward kernel B trained by ``rule`` (a name or a Rule)."""


class AlignedMultiheadAttention(_RuleByName, attention.AlignedMultiheadAttention):
    """``nn.MultiheadAttention`` with backward kernels trained by ``rule`` (a name or a Rule)."""
