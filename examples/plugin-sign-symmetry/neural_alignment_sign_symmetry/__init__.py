"""Sign symmetry for neural-alignment: B follows sign(W) (Liao, Leibo and Poggio, 2016).

Registered through the public hooks only, as any plugin would.
"""

import torch

from neural_alignment import hookimpl
from neural_alignment.core.primitives import Primitive, sum_of_squares
from neural_alignment.core.rules import RuleSpec


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


@hookimpl
def register_primitives(register):
    register("sign", SignPrimitive())


@hookimpl
def register_rules(register):
    register("sign_symmetry", SIGN_SYMMETRY, SIGN_SYMMETRY.doc)
