"""Sign symmetry for neural-alignment (Liao, Leibo and Poggio, 2016; Moskovitz et al., 2018).

Registered through the public hooks only, as any plugin would:

- rules ``usf``, ``brsf``, ``frsf``: B is set from sign(W) before every training forward,
  with uniform, batchwise random or fixed random magnitudes (``feedback.py`` gives the formula);
- primitive ``sign`` and rule ``sign_symmetry``: B *learns* towards sign(W) * mean|W| by
  gradient descent on a regularizer, as the paper's rules learn B.
"""

import torch

from neural_alignment import hookimpl
from neural_alignment.core.primitives import Primitive, sum_of_squares
from neural_alignment.core.rules import RuleSpec
from neural_alignment_sign_symmetry.feedback import SignConcordantFeedback

__version__ = "0.2.0"


class SignPrimitive(Primitive):
    """sign = sum (B - s)^2 with s = sign(W) * mean|W| (W detached); minimum at B = s."""

    name = "sign"
    needs = frozenset({"weights"})

    def __call__(self, ctx) -> torch.Tensor:
        W = ctx.W.detach()
        target = torch.sign(W) * W.abs().mean()
        return sum_of_squares(ctx.B - target)


SIGN_SYMMETRY = RuleSpec(
    name="sign_symmetry",
    weights={"sign": 1.0},
    doc="Sign symmetry: R = sign, so B -> sign(W) * mean|W| (Liao et al. 2016).",
)

SIGN_CONCORDANT_RULES = (
    RuleSpec(
        "usf",
        trains_backward_weight=False,
        feedback=SignConcordantFeedback("uniform"),
        doc="Uniform sign-concordant feedback: B = RMS(W) sign(W), set before every training forward.",
    ),
    RuleSpec(
        "brsf",
        trains_backward_weight=False,
        feedback=SignConcordantFeedback("batch_random"),
        doc="Batchwise random magnitude sign-concordant feedback: B = |M| sign(W) at W's norm, "
        "M ~ U(0, 1) redrawn every batch.",
    ),
    RuleSpec(
        "frsf",
        trains_backward_weight=False,
        feedback=SignConcordantFeedback("fixed_random"),
        doc="Fixed random magnitude sign-concordant feedback: B = |B0| sign(W) at W's norm, |B0| drawn once per layer.",
    ),
)


@hookimpl
def register_primitives(register):
    register("sign", SignPrimitive())


@hookimpl
def register_rules(register):
    register("sign_symmetry", SIGN_SYMMETRY, SIGN_SYMMETRY.doc)
    for spec in SIGN_CONCORDANT_RULES:
        register(spec.name, spec, spec.doc)
