"""The alignment pass of one layer: the fields primitives read, each computed on first use.

``AlignmentContext(layer, rule)`` exposes, for the layer's latest forward (docs/design.md, steps
in order; "per example over its features" = over every non-batch axis):

1. ``x``: the layer's input, detached; replaced by noise of std ``rule.noise_std`` when it is
   > 0 (``normal``: N(0, std^2); ``uniform``: U(-sqrt(3) std, sqrt(3) std)), shaped like x.
2. BI FWMC: x - mean_features(x); BI FWL2N: (x - mean_features(x)) / ||x - mean_features(x)||_2.
3. ``x_b`` = x, minus its batch mean when BI BWMC (backward path only). Batch means (BI BWMC,
   FO BWMC) are over this process's batch, or over the global batch when the layer has a
   ``batch_mean`` (``ddp``'s ``sync_alignment_means`` sets one).
4. projections ``fp = project(x, W, b if FO bias)``, ``bp = project(x_b, B, b if BO bias)``:
   x W^T + b for a dense layer, conv2d(x, W) + b for a conv. The bias of both paths is the
   layer's own bias, detached (as the original code did): a separate backward bias would be
   a parameter that only the alignment loss trains, which no rule of the paper has.
   A layer without a bias adds none whatever the flags say.
   A rule that reads bp only through sum t*bp (``amp``) with a t independent of B, where bp is
   linear in B, gets that sum as <kernel_gradient(x_b, t), B> without forming bp
   (:meth:`AlignmentContext.backward_projection_inner`).
5. FO ReLU / BO ReLU: relu(fp) / relu(bp).
6. reconstructions ``fr = reconstruct(fp, B)``, ``br = reconstruct(bp, W)`` from the
   projections of step 5 (fp B / bp W; conv_transpose2d with x's size for a conv).
7. FO FWMC, FO FWL2N, FO BWMC on fp and fr (that order); BO FWMC, BO FWL2N on bp and br.
   When FO BWMC is the only one, fr reconstructs the centred fp instead (the same field:
   batch centring commutes with the linear, per-example reconstruction).

``W`` is the layer's weight, detached unless ``rule.align_forward_weight``; ``B`` is the
backward weight itself (alignment gradients reach it); ``G`` is the task gradient of W
(``layer.weight.grad``, detached) or None. Decay, self and angle read only W, B and G, so
a rule made of them costs O(params) and never runs a projection.

When neither noise nor an input operation changes x, W takes no alignment gradient and
the FO bias flag gives the bias the layer used (FO bias on, or no bias), the projection
before ReLU equals ``layer.last_output`` and is reused, not recomputed.
"""

from __future__ import annotations

import math
from functools import cached_property

import torch
import torch.nn.functional as F
from torch import Tensor

from neural_alignment.core.primitives import inner

B_FREE_FIELDS = frozenset({"x", "x_b", "fp"})
"""The fields that never depend on B (fr and br do, through B or bp)."""


class _Centred(torch.autograd.Function):
    """c = t - mean(t over ``dim``); the centring is a symmetric projection, so its backward is
    g - mean(g over ``dim``): a reduction and a subtraction, where autograd's graph of the same
    expression makes four passes over t's size (mean's expanded divide, the negation, the sum)."""

    @staticmethod
    def forward(ctx, t: Tensor, dim: int) -> Tensor:
        ctx.dim = dim
        return t - t.mean(dim=dim, keepdim=True)

    @staticmethod
    def backward(ctx, g: Tensor):
        return g - g.mean(dim=ctx.dim, keepdim=True), None


def centred(t: Tensor, dim: int) -> Tensor:
    """``t - t.mean(dim, keepdim=True)``, with the closed-form backward of :class:`_Centred`."""
    return _Centred.apply(t, dim)


def feature_centre(t: Tensor) -> Tensor:
    """t - mean over the non-batch axes, per example."""
    return centred(t.flatten(1), 1).view_as(t)


def feature_l2_normalise(t: Tensor) -> Tensor:
    """Centre per example over its features, then divide by the L2 norm (floored at 1e-12)."""
    return F.normalize(feature_centre(t).flatten(1), dim=1, eps=1e-12).view_as(t)


def input_noise(like: Tensor, std: float, dist: str) -> Tensor:
    """Noise of standard deviation ``std`` shaped like ``like``: normal, or uniform on +-sqrt(3) std."""
    if dist == "uniform":
        return (torch.rand_like(like) * 2.0 - 1.0) * (math.sqrt(3.0) * std)
    return torch.randn_like(like) * std


def _apply(t: Tensor, ops) -> Tensor:
    for op in ops:
        t = op(t)
    return t


class AlignmentContext:
    """The lazily computed fields x, x_b, W, B, fp, bp, fr, br, G of one layer's alignment pass."""

    def __init__(self, layer, rule):
        self.layer = layer
        self.rule = rule
        self.flags = rule.flags

    def batch_centre(self, t: Tensor) -> Tensor:
        """t - its batch mean: the layer's ``batch_mean(t)`` when it has one (a data-parallel
        backend sets a mean over every process's batch), else over this batch."""
        mean = getattr(self.layer, "batch_mean", None)
        return centred(t, 0) if mean is None else t - mean(t)

    # -- inputs and kernels ---------------------------------------------------------------
    @property
    def input_changed(self) -> bool:
        """True when noise or BI FWMC/FWL2N make x differ from the layer's input."""
        return self.rule.noise_std > 0 or self.flags.bi_fwmc or self.flags.bi_fwl2n

    @cached_property
    def x(self) -> Tensor:
        """Step 1-2: the input (or noise replacing it), then BI FWMC, BI FWL2N."""
        x = self.layer.last_input.detach()
        if self.rule.noise_std > 0:
            x = input_noise(x, self.rule.noise_std, self.rule.noise_dist)
        return _apply(
            x,
            [
                op
                for flag, op in ((self.flags.bi_fwmc, feature_centre), (self.flags.bi_fwl2n, feature_l2_normalise))
                if flag
            ],
        )

    @cached_property
    def x_b(self) -> Tensor:
        """Step 3: the backward path's input, batch-centred when BI BWMC."""
        return self.batch_centre(self.x) if self.flags.bi_bwmc else self.x

    @cached_property
    def W(self) -> Tensor:
        """The forward kernel, detached unless the rule aligns W too."""
        W = self.layer.weight
        return W if self.rule.align_forward_weight else W.detach()

    @property
    def B(self) -> Tensor:
        """The backward kernel (a Parameter: alignment gradients reach it)."""
        return self.layer.backward_weight

    @cached_property
    def G(self) -> Tensor | None:
        """The task gradient of W from the last backward, detached; None before any."""
        grad = self.layer.weight.grad
        return None if grad is None else grad.detach()

    def _bias(self, flag: bool) -> Tensor | None:
        bias = self.layer.bias
        return bias.detach() if flag and bias is not None else None

    # -- projections and reconstructions before the output operations ------------------
    @property
    def reuses_output(self) -> bool:
        """True when the forward projection equals ``layer.last_output`` (see the module docstring)."""
        return (
            not self.input_changed
            and not self.rule.align_forward_weight
            and (self.flags.fo_bias or self.layer.bias is None)
            and self.layer.last_output is not None
        )

    @cached_property
    def _fp(self) -> Tensor:
        """Steps 4-5, forward path: project(x, W, b?) (or the layer's output), ReLU if FO ReLU."""
        fp = (
            self.layer.last_output
            if self.reuses_output
            else self.layer.project(self.x, self.W, self._bias(self.flags.fo_bias))
        )
        return F.relu(fp) if self.flags.fo_relu else fp

    @cached_property
    def _bp(self) -> Tensor:
        """Steps 4-5, backward path: project(x_b, B, b?), ReLU if BO ReLU."""
        bp = self.layer.project(self.x_b, self.B, self._bias(self.flags.bo_bias))
        return F.relu(bp) if self.flags.bo_relu else bp

    # -- step 7: the output operations --------------------------------------------------
    def _forward_ops(self):
        f = self.flags
        return [
            op
            for flag, op in (
                (f.fo_fwmc, feature_centre),
                (f.fo_fwl2n, feature_l2_normalise),
                (f.fo_bwmc, self.batch_centre),
            )
            if flag
        ]

    def _backward_ops(self):
        f = self.flags
        return [op for flag, op in ((f.bo_fwmc, feature_centre), (f.bo_fwl2n, feature_l2_normalise)) if flag]

    @cached_property
    def fp(self) -> Tensor:
        """The forward projection after FO FWMC, FO FWL2N, FO BWMC."""
        return _apply(self._fp, self._forward_ops())

    @cached_property
    def bp(self) -> Tensor:
        """The backward projection after BO FWMC, BO FWL2N."""
        return _apply(self._bp, self._backward_ops())

    @property
    def bp_by_kernel_product(self) -> bool:
        """True when the rule reads bp only through an inner product with a field that does not
        depend on B (its one weighted reader of bp a ``PairedPrimitive`` with ``inner_product``, W
        not aligned) and bp = project(x_b, B) is linear in B (no BO operation, no bias added):
        :meth:`backward_projection_inner` then never forms bp (every ``AlignedLayer`` has ``kernel_gradient``)."""
        f = self.flags
        readers = self.rule.readers("bp")
        return (
            not (f.bo_relu or f.bo_fwmc or f.bo_fwl2n or (f.bo_bias and self.layer.bias is not None))
            and len(readers) == 1
            and readers[0].inner_product
            and {readers[0].p, readers[0].q} - {"bp"} <= B_FREE_FIELDS
            and not self.rule.align_forward_weight
        )

    def backward_projection_inner(self, t: Tensor) -> Tensor:
        """sum t * bp, for ``t`` shaped like bp.

        With :attr:`bp_by_kernel_product` (and ``t`` taking no gradient) it is <K, B>, where
        K = ``layer.kernel_gradient(x_b, t)`` = d<t, project(x_b, K')>/dK' does not depend on B:
        <t, project(x_b, B)> = <K, B> for a product linear in its kernel. One kernel product (the
        one bp's own backward would run) gives the value and the gradient K; bp's forward
        product and the output-sized passes of the inner product and of its backward are saved."""
        if self.bp_by_kernel_product and not t.requires_grad:
            B = self.B
            return inner(self.layer.kernel_gradient(self.x_b, t, B.detach()).to(B.dtype), B)  # K in autocast's dtype
        return inner(t, self.bp)

    @property
    def centring_commutes(self) -> bool:
        """True when FO BWMC is the forward path's only output operation: batch centring then
        commutes with the reconstruction (see :attr:`fr`)."""
        f = self.flags
        return f.fo_bwmc and not (f.fo_fwmc or f.fo_fwl2n)

    @cached_property
    def fr(self) -> Tensor:
        """reconstruct(fp, B) (fp before the output operations), then FO FWMC, FO FWL2N, FO BWMC.

        With FO BWMC alone it is reconstruct(fp, B) of the centred fp: ``reconstruct`` is linear
        and maps every example alike (docs/internals.md), so centring over the batch before it
        equals centring after it, and fp is centred already: the input-sized centring and its
        backward are saved (the same holds for a data-parallel global batch mean)."""
        if self.centring_commutes:
            return self.layer.reconstruct(self.fp, self.B, self.x)
        return _apply(self.layer.reconstruct(self._fp, self.B, self.x), self._forward_ops())

    @cached_property
    def br(self) -> Tensor:
        """reconstruct(bp, W) (bp before the output operations), then BO FWMC, BO FWL2N."""
        return _apply(self.layer.reconstruct(self._bp, self.W, self.x), self._backward_ops())
