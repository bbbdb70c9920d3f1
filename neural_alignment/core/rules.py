"""Rules: a weighted sum of primitives plus the options of the alignment pass.

The layer-wise regularizer of a rule at epoch ``e`` is

    R_l(e) = sum over primitives p with a nonzero coefficient of  weights[p] * schedules[p](e) * p(ctx_l)

where ``ctx_l`` is the alignment pass of layer l on its latest input (``core/context.py``).
Primitives the op delivers itself during the task backward (``in_backward``: ``angle``) are
left out of ``R_l``; their coefficient reaches the op through ``layer.angle_scale`` (see
``core/alignment.set_epoch``).

A :class:`RuleSpec` is what a plugin registers (defaults); :func:`build_rule` turns it into a
:class:`Rule`, given the primitives by name and the user's overrides. One ``Rule`` object is
shared by all layers; it holds no per-layer or per-step state.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from neural_alignment.core.context import AlignmentContext
from neural_alignment.core.errors import UserError
from neural_alignment.core.feedback import Feedback
from neural_alignment.core.primitives import PairedPrimitive, Primitive, WeightQuadratic, quadratic_form
from neural_alignment.core.schedules import make_schedule

NOISE_DISTRIBUTIONS = ("normal", "uniform")


@dataclass(frozen=True)
class Flags:
    """The paper's layer-wise operations of the alignment pass (all off by default).

    Prefixes: ``bi`` the backward pass input x, ``fo`` the forward path output fp (and fr),
    ``bo`` the backward path output bp (and br). Operations: ``bias`` add the layer's bias
    (detached) to the projection, ``relu`` apply ReLU to the projection, ``fwmc`` centre each
    example over its features (all non-batch axes), ``fwl2n`` centre then L2-normalise each
    example over its features, ``bwmc`` subtract the batch mean.
    """

    fo_bias: bool = False
    fo_relu: bool = False
    fo_fwmc: bool = False
    fo_fwl2n: bool = False
    fo_bwmc: bool = False
    bo_bias: bool = False
    bo_relu: bool = False
    bo_fwmc: bool = False
    bo_fwl2n: bool = False
    bi_bwmc: bool = False
    bi_fwmc: bool = False
    bi_fwl2n: bool = False


FLAG_NAMES: tuple[str, ...] = tuple(f.name for f in fields(Flags))

AKROUT_FLAGS: dict[str, bool] = {"fo_bias": True, "fo_relu": True, "fo_bwmc": True, "bi_bwmc": True}
"""The layer-wise operations fixed by Akrout et al. (2019) and the paper's WM/IA searches:
batch-centre the backward input and the forward output, bias and ReLU on the forward path only."""

OPTION_KEYS: tuple[str, ...] = ("weights", "flags", "noise_std", "noise_dist", "schedules", "align_forward_weight")
"""What :func:`build_rule` accepts as overrides (and a :class:`RuleSpec` as default options, less ``weights``)."""


@dataclass(frozen=True)
class RuleSpec:
    """A rule's defaults, as a plugin registers it.

    ``weights``: primitive name -> weight. ``options``: defaults for the other keys of
    ``OPTION_KEYS`` (``flags``, ``noise_std``, ``noise_dist``, ``schedules``,
    ``align_forward_weight``). ``has_backward_weight`` False means the layer holds no B
    (``bp``); ``trains_backward_weight`` False means no optimizer trains B (``fa``).
    ``feedback``: a ``core.feedback.Feedback`` for a backward path beyond ``dx = dy B`` (sign
    symmetry sets B from W, direct feedback replaces dx); it needs ``has_backward_weight``.
    ``recipe``: the rule's recommended recipe settings, shaped like a recipe's ``by_rule`` entry
    (e.g. ``{"optim": {"alignment": {"name": "gd", "lr": 25.0}}}``); a recipe run with this rule
    gets them below its own ``by_rule`` entry for it (``recipes/loader.py``). Without them the
    rule trains with the recipe's settings as they are.
    """

    name: str
    weights: Mapping[str, float] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)
    has_backward_weight: bool = True
    trains_backward_weight: bool = True
    doc: str = ""
    feedback: Feedback | None = None
    recipe: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.feedback is not None and not self.has_backward_weight:
            raise ValueError(f"rule {self.name!r}: a feedback path needs has_backward_weight=True (the aligned op)")


class Rule:
    """A learning rule for B: primitive weights and schedules, the alignment pass's options.

    Attributes (docs/internals.md's Rule contract): ``name``, ``weights``, ``primitives``,
    ``schedules`` (one per weight, built by ``make_schedule`` from the given configs; constant 1
    unless set), ``flags`` (:class:`Flags`),
    ``noise_std``, ``noise_dist``, ``has_backward_weight``, ``trains_backward_weight``,
    ``uses_angle``, ``align_forward_weight``, ``feedback`` (the spec's, shared by every layer).
    """

    def __init__(
        self,
        name: str,
        weights: Mapping[str, float],
        primitives: Mapping[str, Primitive],
        schedules: Mapping[str, Any] | None = None,
        flags: Flags = Flags(),
        noise_std: float = 0.0,
        noise_dist: str = "normal",
        has_backward_weight: bool = True,
        trains_backward_weight: bool = True,
        align_forward_weight: bool = False,
        doc: str = "",
        feedback: Feedback | None = None,
    ):
        self.name = name
        self.weights = {k: float(v) for k, v in weights.items()}
        self.primitives = {k: primitives[k] for k in self.weights}
        schedules = dict(schedules or {})
        self.schedules = {k: make_schedule(schedules.get(k)) for k in self.weights}
        self.flags = flags
        self.noise_std = float(noise_std)
        self.noise_dist = noise_dist
        self.has_backward_weight = has_backward_weight
        self.trains_backward_weight = trains_backward_weight
        self.align_forward_weight = align_forward_weight
        self.doc = doc
        self.feedback = feedback

    def readers(self, field: str) -> list[PairedPrimitive]:
        """The weighted paired primitives (``PairedPrimitive``) that read the context field ``field`` as P or Q."""
        return [
            primitive
            for name, primitive in self.primitives.items()
            if self.weights[name] and isinstance(primitive, PairedPrimitive) and field in (primitive.p, primitive.q)
        ]

    @property
    def uses_angle(self) -> bool:
        """True when ``angle`` has a nonzero weight: the op then delivers dB = angle_scale * dW."""
        return self.weights.get("angle", 0.0) != 0.0

    def backward_gradient_in_graph(self, angle: bool = True) -> bool:
        """True when B takes some gradient in the backward: a weighted primitive other than the
        kernels' quadratic forms (those ``core.alignment.add_weight_gradients`` adds after it), or,
        with ``angle``, the angle update the op delivers. sa's B takes none (a backend that reduces
        gradients in the backward, as ``ddp``, leaves such a B out: its closed-form gradient is the
        same on every process); nor does kp's when the trainer delivers its angle update from the
        averaged W.grad (``angle=False``)."""
        return any(
            not isinstance(self.primitives[name], WeightQuadratic) and (angle or not self.primitives[name].in_backward)
            for name, weight in self.weights.items()
            if weight
        )

    def coefficient(self, name: str, epoch: float) -> float:
        """``weights[name] * schedules[name](epoch)``; 0 for a primitive the rule does not weigh."""
        if name not in self.weights:
            return 0.0
        return self.weights[name] * self.schedules[name](epoch)

    def weight_form(self, epoch: float) -> tuple[float, float, float]:
        """(ww, bb, wb) of the sum of the rule's quadratic forms of the kernels (``WeightQuadratic``:
        decay, self) at ``epoch``, each weighted by its coefficient: the weighted sum is
        ``ww sum W^2 + bb sum B^2 + wb sum W*B``. (0, 0, 0) when the rule has none."""
        forms = [
            (self.coefficient(name, epoch), primitive.form)
            for name, primitive in self.primitives.items()
            if isinstance(primitive, WeightQuadratic)
        ]
        ww, bb, wb = (sum(c * form[i] for c, form in forms) for i in range(3))
        return float(ww), float(bb), float(wb)

    def regularizer(self, layer, epoch: float | None = None, weight_terms: bool = True) -> torch.Tensor:
        """R_l = sum of coefficient(p, epoch) * p(ctx) over the primitives not delivered by the op,
        for ``layer``'s latest forward; ``epoch`` defaults to ``layer.epoch``. A zero tensor when
        no term applies (no forward yet, no B, or every coefficient 0). The quadratic forms of the
        kernels (``WeightQuadratic``: decay, self) are summed into one, evaluated once; with
        ``weight_terms=False`` they are left out (the caller adds their gradient in closed form:
        ``core.alignment.add_weight_gradients``)."""
        epoch = layer.epoch if epoch is None else epoch
        terms = [
            (coefficient, primitive)
            for name, primitive in self.primitives.items()
            if not primitive.in_backward
            and (weight_terms or not isinstance(primitive, WeightQuadratic))
            and (coefficient := self.coefficient(name, epoch)) != 0.0
        ]
        if not terms or layer.last_input is None or layer.backward_weight is None:
            return layer.weight.new_zeros(())
        ctx = AlignmentContext(layer, self)
        parts = [
            coefficient * primitive(ctx)
            for coefficient, primitive in terms
            if not isinstance(primitive, WeightQuadratic)
        ]
        if weight_terms and any(isinstance(p, WeightQuadratic) for _, p in terms):
            parts.append(quadratic_form(ctx.W, ctx.B, *self.weight_form(epoch)))
        return sum(parts[1:], parts[0])

    def __repr__(self) -> str:
        return f"Rule({self.name!r}, weights={self.weights})"


def _primitive_table(primitives) -> dict[str, Primitive]:
    """A dict of primitives from a Mapping or a registry Catalog (``names`` + ``get``)."""
    if isinstance(primitives, Mapping):
        return dict(primitives)
    return {name: primitives.get(name) for name in primitives}


def _check_names(what: str, given, valid) -> None:
    for name in given:
        if name not in valid:
            raise UserError(f"unknown {what} {name!r}; valid: {', '.join(valid) or '(none)'}")


def build_rule(spec: RuleSpec, primitives, **overrides) -> Rule:
    """Build a :class:`Rule` from ``spec``'s defaults and ``overrides``.

    ``primitives`` maps every known primitive name to its object (a dict, or the registry's
    ``primitives`` catalog). Overrides (``OPTION_KEYS``):

    - ``weights={"decay": 0}`` merges into the spec's weights (a rule from any primitives:
      a spec with no weights plus ``weights=...``);
    - ``flags={"fo_relu": True}`` merges into the spec's flags (names in ``FLAG_NAMES``);
    - ``schedules={"amp": {"kind": "window", "start": 0, "end": 5}}`` merges likewise,
      each value a ``make_schedule`` config, each key a weighted primitive;
    - ``noise_std``, ``noise_dist`` (``"normal"`` or ``"uniform"``), ``align_forward_weight``.

    An override of ``None`` keeps the default. Unknown keys, primitive names, flag names or
    distributions raise ``UserError`` naming them and listing the valid ones; so does a
    nonzero weight on a rule that does not train B.
    """
    _check_names("rule option", overrides, OPTION_KEYS)
    _check_names(f"default option of rule {spec.name!r}", spec.options, OPTION_KEYS[1:])
    overrides = {key: value for key, value in overrides.items() if value is not None}
    table = _primitive_table(primitives)
    options = {**spec.options, **overrides}

    weights = {**spec.weights, **dict(overrides.get("weights") or {})}
    _check_names("primitive", weights, sorted(table))
    if any(weights.values()) and not (spec.has_backward_weight and spec.trains_backward_weight):
        raise UserError(
            f"rule {spec.name!r} does not train a backward weight, so it takes no primitive weights "
            f"(got {weights}); build the rule from 'sa', 'kp', ... or with make_rule(weights=...)"
        )

    flags = {**dict(spec.options.get("flags") or {}), **dict(overrides.get("flags") or {})}
    _check_names("flag", flags, FLAG_NAMES)

    schedules = {**dict(spec.options.get("schedules") or {}), **dict(overrides.get("schedules") or {})}
    _check_names(f"schedule key (a primitive weighted by rule {spec.name!r})", schedules, list(weights))

    noise_dist = options.get("noise_dist", "normal")
    _check_names("noise distribution", [noise_dist], NOISE_DISTRIBUTIONS)
    noise_std = float(options.get("noise_std", 0.0))
    if noise_std < 0:
        raise UserError(f"noise_std must be >= 0, got {noise_std}")

    return Rule(
        name=spec.name,
        weights=weights,
        primitives=table,
        schedules=schedules,
        flags=Flags(**flags),
        noise_std=noise_std,
        noise_dist=noise_dist,
        has_backward_weight=spec.has_backward_weight,
        trains_backward_weight=spec.trains_backward_weight,
        align_forward_weight=bool(options.get("align_forward_weight", False)),
        doc=spec.doc,
        feedback=spec.feedback,
    )
