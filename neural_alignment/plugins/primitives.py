"""Built-in primitives: decay, self, amp, sparse, null, angle (docs/design.md's table).

Mean over the batch, sum over every other axis, no 1/2. Each registers like a third-party
primitive would, through ``register_primitives``.
"""

from __future__ import annotations

import torch

from neural_alignment.core.errors import UserError
from neural_alignment.core.primitives import PairedPrimitive, Primitive, WeightQuadratic, inner, sum_of_squares
from neural_alignment.registry.markers import hookimpl


class Decay(WeightQuadratic):
    """decay = sum W^2 + sum B^2."""

    name = "decay"
    form = (1.0, 1.0, 0.0)


class Self(WeightQuadratic):
    """self = -sum W*B = -tr(W^T B); with decay at half its weight the fixed point is B = W."""

    name = "self"
    form = (0.0, 0.0, -1.0)


class Amp(PairedPrimitive):
    """amp = -sum mean(P*Q), default (P, Q) = (fp, bp).

    With bp among them, sum P*bp is ``ctx.backward_projection_inner(P)`` (one kernel product where
    bp is linear in B: ``core/context.py``)."""

    name = "amp"
    inner_product = True

    def __init__(self, p: str = "fp", q: str = "bp"):
        if p is None or q is None:
            raise UserError("amp needs two fields P and Q; with None it would be identically 0")
        super().__init__(p, q)

    def __call__(self, ctx) -> torch.Tensor:
        assert self.p is not None and self.q is not None  # the constructor refuses None fields
        if "bp" in (self.p, self.q) and self.p != self.q:
            other = getattr(ctx, self.q if self.p == "bp" else self.p)
            return -ctx.backward_projection_inner(other) / other.shape[0]
        p, q = self.operands(ctx)
        assert p is not None and q is not None
        return -inner(p, q) / p.shape[0]


class Sparse(PairedPrimitive):
    """sparse = sum mean(P^2) + sum mean(Q^2), default (P, Q) = (fp, bp); a None field counts 0."""

    name = "sparse"

    def __init__(self, p: str | None = "fp", q: str | None = "bp"):
        if p is None and q is None:
            raise UserError(f"{self.name} needs at least one of P and Q")
        super().__init__(p, q)

    def __call__(self, ctx) -> torch.Tensor:
        total = sum(sum_of_squares(t) / t.shape[0] for t in self.operands(ctx) if t is not None)
        assert isinstance(total, torch.Tensor)  # the constructor refuses two None fields
        return total


class Null(Sparse):
    """null = sum mean(P^2) + sum mean(Q^2), default (P, Q) = (fr, 0): fr = fp B, the forward output sent
    back through B."""

    name = "null"

    def __init__(self, p: str | None = "fr", q: str | None = None):
        super().__init__(p, q)


class Angle(Primitive):
    """angle = sum B*G, G the task gradient of W from the last backward (detached): tr(x^T B r) of the paper.

    Its gradient with respect to B is G. The op delivers ``angle_scale * dW`` to B during
    the task backward (``in_backward``), so a rule never adds it to the alignment loss.
    Before any task backward (G is None) its value is 0.
    """

    name = "angle"
    needs = frozenset({"weights", "task_gradient"})
    in_backward = True

    def __call__(self, ctx) -> torch.Tensor:
        if ctx.G is None:
            return ctx.B.new_zeros(())
        return inner(ctx.B, ctx.G)


BUILTIN_PRIMITIVES: tuple[Primitive, ...] = (Decay(), Self(), Amp(), Sparse(), Null(), Angle())


@hookimpl
def register_primitives(register):
    for primitive in BUILTIN_PRIMITIVES:
        register(primitive.name, primitive)
