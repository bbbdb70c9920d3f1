"""Built-in rules: bp, fa, wm, ia, sa, aa, kp (docs/design.md's table; weights from the original code).

Each is a :class:`RuleSpec`: default primitive weights and options. The regularizer of a
layer is R_l = sum_p weight_p * schedule_p(epoch) * P_p (primitives in ``plugins/primitives``).
Flags: wm and ia default to Akrout et al.'s layer-wise operations (FO bias, FO ReLU,
FO BWMC, BI BWMC) as the paper's WM/IA searches fixed them; aa to biases on both paths and
no ReLU (the paper's Table 4 runs). Input noise is off; recipes set Table 5's values.
"""

from __future__ import annotations

from neural_alignment.core.rules import AKROUT_FLAGS, RuleSpec
from neural_alignment.registry.markers import hookimpl

KP_DECAY = 5e-5
"""kp's default decay weight lambda_KP / (2 lr_B): with lambda_KP = lr * 1e-4 it shrinks B per
step exactly as ``weight_decay=1e-4`` shrinks W in an SGD optimizer of the same lr, the
tie Kolen-Pollack needs (B - W then decays geometrically). Recipes set their own."""

BUILTIN_RULES: tuple[RuleSpec, ...] = (
    RuleSpec(
        "bp",
        has_backward_weight=False,
        doc="Backpropagation: no backward weight, plain F.linear/F.conv2d (B = W implicitly). R_l = 0.",
    ),
    RuleSpec(
        "fa",
        trains_backward_weight=False,
        doc="Feedback alignment: B fixed at its random init. R_l = 0.",
    ),
    RuleSpec(
        "wm",
        weights={"amp": 1e-3, "decay": 1e-3},
        options={"flags": AKROUT_FLAGS},
        doc="Weight mirror: R_l = 1e-3 amp + 1e-3 decay = -1e-3 sum mean(fp*bp) + 1e-3 (|W|^2 + |B|^2).",
    ),
    RuleSpec(
        "ia",
        weights={"amp": 2e-3, "null": 1e-3, "decay": 1e-3},
        options={"flags": AKROUT_FLAGS},
        doc="Information alignment: R_l = 2e-3 amp + 1e-3 null + 1e-3 decay = "
        "-2e-3 sum mean(fp*bp) + 1e-3 sum mean(fr^2) + 1e-3 (|W|^2 + |B|^2).",
    ),
    RuleSpec(
        "sa",
        weights={"decay": 1e-3, "self": 2e-3},
        doc="Symmetric alignment: R_l = 1e-3 decay + 2e-3 self = 1e-3 (|W|^2 + |B|^2) - 2e-3 sum W*B "
        "= 1e-3 |W - B|^2 (fixed point B = W).",
    ),
    RuleSpec(
        "aa",
        weights={"sparse": 1e-3, "amp": 2e-3},
        options={"flags": {"fo_bias": True, "bo_bias": True}},
        doc="Activation alignment: R_l = 1e-3 sparse + 2e-3 amp = 1e-3 sum mean(fp^2 + bp^2) - 2e-3 sum mean(fp*bp) "
        "= 1e-3 sum mean((fp - bp)^2).",
    ),
    RuleSpec(
        "kp",
        weights={"angle": 1.0, "decay": KP_DECAY},
        doc=f"Kolen-Pollack: R_l = angle + {KP_DECAY:g} decay = sum B*G + {KP_DECAY:g} (|W|^2 + |B|^2); "
        "the op delivers angle's gradient dB = dW in the task backward.",
    ),
)


@hookimpl
def register_rules(register):
    for spec in BUILTIN_RULES:
        register(spec.name, spec, spec.doc)
