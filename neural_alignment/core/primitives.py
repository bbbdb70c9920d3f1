"""Primitives: the layer-wise regularizers a rule weighs and sums.

A primitive is a small object with a ``name``, a formula in its docstring, what it
``needs`` (a set of the categories in ``NEEDS``, checked when a plugin registers it: a
declaration for readers and tools; the pass does not read it) and ``__call__(ctx) -> scalar tensor``, where ``ctx``
is an :class:`~neural_alignment.core.context.AlignmentContext` (fields ``x, x_b, W, B, fp, bp,
fr, br, G``, computed lazily: a primitive only pays for the fields it reads).

Conventions (docs/design.md): "mean" is the mean over the batch axis (axis 0), every other
axis is summed; no factor 1/2 anywhere. ``W`` and ``B`` have the layer's kernel shape.

A primitive of the kernels alone that is a quadratic form of them (decay, self) subclasses
:class:`WeightQuadratic`: the rule sums every such term of a layer into one form and evaluates
it with one closed-form autograd function (:func:`quadratic_form`) instead of a graph per term.
The trainer does not even build that: it leaves the forms out of the loss and adds their
gradient to ``B.grad`` (and ``W.grad``) in place after the backward (:func:`add_quadratic_gradient`),
which allocates no kernel-sized tensor in a step.

To add one, subclass :class:`Primitive` (or :class:`PairedPrimitive` for a function of two
activation fields, :class:`WeightQuadratic` for a quadratic form of W and B) and register an
instance through the ``register_primitives`` hook. The built-in six live in
``neural_alignment.plugins.primitives``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from neural_alignment.core.errors import UserError

NEEDS = frozenset({"weights", "projections", "reconstructions", "task_gradient"})
"""What a primitive may need: kernels, projections fp/bp, reconstructions fr/br, the task gradient G."""

FIELD_NEEDS: dict[str, frozenset] = {
    "x": frozenset(),
    "x_b": frozenset(),
    "fp": frozenset({"projections"}),
    "bp": frozenset({"projections"}),
    "fr": frozenset({"projections", "reconstructions"}),
    "br": frozenset({"projections", "reconstructions"}),
}
"""The activation fields a primitive may pair, and what reading each costs."""


class _SumOfSquares(torch.autograd.Function):
    """sum t^2 as one dot product; backward 2 g t in one pass (autograd's would take three)."""

    @staticmethod
    def forward(t: torch.Tensor) -> torch.Tensor:
        flat = t.reshape(-1)
        return torch.dot(flat, flat)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (t,) = ctx.saved_tensors
        return t * (2 * grad)


def sum_of_squares(t: torch.Tensor) -> torch.Tensor:
    """``sum t^2`` over every element; d/dt = 2t. Per-weight terms cost memory passes, so
    this takes one pass forward (a dot product) and one backward (benchmarks/ops.py)."""
    if not t.requires_grad:
        flat = t.reshape(-1)
        return torch.dot(flat, flat)
    return _SumOfSquares.apply(t)


def inner(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``sum a*b`` over every element, as one dot product (no a*b temporary)."""
    return torch.dot(a.reshape(-1), b.reshape(-1))


class _QuadraticForm(torch.autograd.Function):
    """q = ww sum W^2 + bb sum B^2 + wb sum W*B, its gradients in closed form (see :func:`quadratic_form`)."""

    @staticmethod
    def forward(ctx: Any, W: torch.Tensor, B: torch.Tensor, ww: float, bb: float, wb: float) -> torch.Tensor:
        if bb:
            u = torch.add(B, W, alpha=wb / (2 * bb)) if wb else B  # dq/dB = 2 bb u
            q = bb * inner(u, u)
            rest = ww - wb * wb / (4 * bb)  # q = bb |u|^2 + rest |W|^2
            if abs(rest) > 1e-9 * abs(ww):  # else a perfect square (sa's), up to the coefficients' rounding
                q = q + rest * inner(W, W)
            ctx.scale = 2 * bb
        else:
            u = W  # dq/dB = wb W
            q = wb * inner(W, B)
            if ww:
                q = q + ww * inner(W, W)
            ctx.scale = wb
        ctx.form = (ww, bb, wb)
        ctx.save_for_backward(u, W, B)
        return q

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        u, W, B = ctx.saved_tensors
        ww, bb, wb = ctx.form
        if torch.is_grad_enabled():  # a gradient to differentiate again (create_graph): from W and B themselves
            u = torch.add(B, W, alpha=wb / (2 * bb)) if bb else W
        dB = u * (grad * ctx.scale) if ctx.needs_input_grad[1] else None
        dW = (W * (2 * ww) + B * wb) * grad if ctx.needs_input_grad[0] else None
        return dW, dB, None, None, None


def quadratic_form(W: torch.Tensor, B: torch.Tensor, ww: float, bb: float, wb: float) -> torch.Tensor:
    """``q = ww sum W^2 + bb sum B^2 + wb sum W*B``, with ``dq/dB = 2 bb B + wb W`` and ``dq/dW = 2 ww W + wb B``.

    One pass forms u = B + (wb / 2 bb) W (so dq/dB = 2 bb u) and q = bb |u|^2 + (ww - wb^2 / 4 bb) |W|^2
    (the second term left out when it is 0: a perfect square such as |W - B|^2); with bb = 0,
    dq/dB = wb W and q = wb sum W*B + ww |W|^2. The backward is one product: no graph per term
    (under ``create_graph`` it recomputes u from W and B, so second derivatives are exact).
    """
    return _QuadraticForm.apply(W, B, float(ww), float(bb), float(wb))


@torch.no_grad()
def add_quadratic_gradient(
    W: torch.Tensor,
    B: torch.Tensor,
    ww: float,
    bb: float,
    wb: float,
    scale: float,
    buffer: torch.Tensor | None = None,
    own_decay: bool = True,
) -> torch.Tensor | None:
    """Add ``scale`` times the gradient of ``q = ww sum W^2 + bb sum B^2 + wb sum W*B`` to the
    gradient of each kernel that requires one, in place, without an autograd graph::

        B.grad += scale (2 bb B + wb W)          W.grad += scale (2 ww W + wb B)

    (what :func:`quadratic_form` gives through autograd; pass W detached to leave W out). With
    ``own_decay=False`` B's term ``scale 2 bb B`` is left out: the caller's optimizer adds it as its
    weight decay, inside its own pass over B. When ``B.grad`` is None, the sum is written into
    ``buffer`` (shaped like B, kept by the caller from one step to the next; allocated when None or
    of another shape), which becomes ``B.grad`` (zeros when nothing is left to write: the optimizer
    then still decays B): a step makes at most two passes over the kernel and allocates no
    kernel-sized tensor. Returns B's buffer.
    """
    if W.requires_grad and (ww or wb):  # W.grad None: W aligned before any task gradient, rare
        _add_terms(gradient_of(W), W, 2 * ww * scale, B, wb * scale)
    own = 2 * bb * scale if own_decay else 0.0
    if B.requires_grad and (bb or wb):
        if B.grad is None:
            if buffer is None or buffer.shape != B.shape:
                buffer = torch.empty_like(B)
            if own:
                torch.mul(B, own, out=buffer)
                if wb:
                    buffer.add_(W, alpha=wb * scale)
            elif wb:
                torch.mul(W, wb * scale, out=buffer)
            else:
                buffer.zero_()
            B.grad = buffer
        else:
            _add_terms(B.grad, B, own, W, wb * scale)
    return buffer


def gradient_of(t: torch.Tensor) -> torch.Tensor:
    """``t.grad``, first set to zeros when the backward left it None: a tensor to add a term into, in place."""
    if t.grad is None:
        t.grad = torch.zeros_like(t)
    return t.grad


def _add_terms(grad: torch.Tensor, x: torch.Tensor, a: float, y: torch.Tensor, c: float) -> None:
    """grad += a x + c y in place, skipping a zero coefficient."""
    if a:
        grad.add_(x, alpha=a)
    if c:
        grad.add_(y, alpha=c)


class Primitive:
    """Base class: ``name``, docstring formula, ``needs``, ``in_backward``, ``__call__(ctx)``.

    ``in_backward`` is True only when the op delivers the primitive's gradient with respect
    to B during the task backward (``angle``); :meth:`Rule.regularizer` then leaves it out.
    """

    name: ClassVar[str]
    needs: frozenset = frozenset()
    in_backward: ClassVar[bool] = False

    def __call__(self, ctx) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class WeightQuadratic(Primitive):
    """A primitive that is a quadratic form of the kernels: ``form = (ww, bb, wb)`` stands for
    ``ww sum W^2 + bb sum B^2 + wb sum W*B`` (evaluated by :func:`quadratic_form`). A rule adds
    the forms of its weighted terms and evaluates their sum once per layer."""

    needs = frozenset({"weights"})
    form: ClassVar[tuple[float, float, float]]

    def __call__(self, ctx) -> torch.Tensor:
        return quadratic_form(ctx.W, ctx.B, *self.form)


class PairedPrimitive(Primitive):
    """A primitive of two activation fields P and Q of the context, chosen by name at
    construction (``"x", "x_b", "fp", "bp", "fr", "br"``; ``None`` stands for 0).

    ``needs`` follows from the fields: fp/bp need the projections, fr/br the reconstructions.
    ``inner_product`` True declares that the primitive reads P and Q only through sum P*Q, taking
    a bp among them from ``ctx.backward_projection_inner`` (which may never form bp).
    """

    inner_product: ClassVar[bool] = False

    def __init__(self, p: str | None, q: str | None):
        for field in (p, q):
            if field is not None and field not in FIELD_NEEDS:
                raise UserError(
                    f"{self.name}: unknown context field {field!r}; valid fields: {', '.join(FIELD_NEEDS)} or None"
                )
        self.p, self.q = p, q
        self.needs = frozenset().union(*(FIELD_NEEDS[f] for f in (p, q) if f is not None))

    def operands(self, ctx) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(P, Q) read from ``ctx``; a field named ``None`` gives ``None``."""
        p, q = (None if f is None else getattr(ctx, f) for f in (self.p, self.q))
        return p, q

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p!r}, q={self.q!r})"
