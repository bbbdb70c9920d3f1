"""Sign-concordant feedback: before every training forward, B is set from the sign of W.

For a layer with forward kernel W (n entries), with s = sign(W) (sign(0) taken as +1, so no
entry of B is ever zeroed and a fixed magnitude is never lost)::

    B = ||W||_F * (M * s) / ||M * s||_F          (M * s elementwise)

that is, B has W's signs, the relative magnitudes M, and W's Frobenius norm per layer (the
scale neural-alignment gives every B, see ``core.layers.match_backward_scale``). The
variants of Liao, Leibo and Poggio (2016) and Moskovitz et al. (2018) differ only in M:

- uSF  (uniform):               M = 1, so B = RMS(W) * s;
- brSF (batchwise random):      M ~ U(0, 1) i.i.d., redrawn before every forward with gradients
  (once per training batch, after the previous step updated W);
- frSF (fixed random):          M = |B0|, B0 the layer's random initial B (drawn at conversion,
  U(-a, a) entries, so |B0| is U(0, a)), fixed for the whole run. It is read back from B
  itself, which always equals c |B0| * s for a positive c.

B is never trained by an optimizer (the rules set ``trains_backward_weight=False``); it is
the B the task backward uses (dx = dy B) and the one ``layer_metrics`` compares with W.
"""

from __future__ import annotations

import torch
from torch import Tensor

from neural_alignment.core.feedback import Feedback

MAGNITUDES = ("uniform", "batch_random", "fixed_random")


def concordant_signs(W: Tensor) -> Tensor:
    """sign(W) with sign(0) = +1."""
    return torch.where(W >= 0, 1.0, -1.0).to(W.dtype)


def sign_concordant(W: Tensor, M: Tensor) -> Tensor:
    """||W||_F * (M * s) / ||M * s||_F with s = ``concordant_signs(W)``."""
    direction = M * concordant_signs(W)
    return direction * (W.norm() / direction.norm())


class SignConcordantFeedback(Feedback):
    """Before each training forward: B <- ||W|| (M * sign W) / ||M * sign W||, M by ``magnitude``."""

    def __init__(self, magnitude: str):
        if magnitude not in MAGNITUDES:
            raise ValueError(f"magnitude must be one of {MAGNITUDES}, got {magnitude!r}")
        self.magnitude = magnitude

    def magnitudes(self, layer) -> Tensor:
        """M for this forward (uniform: ones; batch_random: a fresh U(0, 1) draw; fixed_random: |B|)."""
        B = layer.backward_weight
        if self.magnitude == "uniform":
            return torch.ones_like(B)
        if self.magnitude == "batch_random":
            return torch.rand_like(B)
        return B.abs()

    def before_forward(self, layer) -> None:
        layer.backward_weight.copy_(sign_concordant(layer.weight, self.magnitudes(layer)))
