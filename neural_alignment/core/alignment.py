"""Model-wide alignment: the alignment loss of the latest forward, and the epoch of every layer.

- ``alignment_loss(model) = sum over aligned layers l of l.rule.regularizer(l)``, each R_l at
  the layer's own ``epoch`` (a zero tensor when the model has none). With ``weight_terms=False``
  the quadratic forms of the kernels (decay, self) are left out, and
- ``add_weight_gradients(model, scale)``, called after the backward, adds ``scale`` times their
  gradient to B.grad (and W.grad when the rule aligns W) in closed form, in place: the
  trainer's step, equal to ``scale * alignment_loss(model)`` in the loss (tests/test_rules.py)
  without a graph or a kernel-sized temporary per layer; with ``decay_in_optimizer`` it leaves
  B's own decay ``2 bb B`` (``backward_decay(model)``) to B's optimizer's weight decay. Where
  every B's gradient is ``scale (wb W + 2 bb B)`` with one ``wb`` (``kernel_gradient_factor``),
  the trainer writes nothing: ``point_gradients_at_kernels`` sets ``B.grad = W`` and B's
  optimizer steps on ``scale wb B.grad`` plus its weight decay (``ComponentOptimizer.
  set_gradient_factor``).
- ``set_epoch(model, epoch, angle_factor)`` sets ``layer.epoch`` and writes
  ``rule.coefficient("angle", epoch) * angle_factor`` into ``layer.angle_scale`` in place
  (``layer.set_angle_scale``), so the op's delivered angle update follows the schedule without
  reallocating a tensor (torch.compile and XLA see the same buffer every step); at exactly 1
  the op gets None and hands dW itself to B.
"""

from __future__ import annotations

import torch
from torch import nn

from neural_alignment.core.layers import aligned_layers
from neural_alignment.core.primitives import add_quadratic_gradient


def alignment_loss(model: nn.Module, weight_terms: bool = True) -> torch.Tensor:
    """sum_l R_l over the aligned layers, for their latest forward; zero when there is none.
    ``weight_terms=False``: without the kernels' quadratic forms (see :func:`add_weight_gradients`)."""
    terms = [layer.rule.regularizer(layer, weight_terms=weight_terms) for _, layer in aligned_layers(model)]
    if terms:
        return sum(terms[1:], terms[0])
    reference = next(model.parameters(), None)
    return torch.zeros(()) if reference is None else reference.new_zeros(())


def set_epoch(model: nn.Module, epoch: float, angle_factor: float = 1.0) -> None:
    """Set every aligned layer's ``epoch`` and fill its ``angle_scale`` with
    ``rule.coefficient("angle", epoch) * angle_factor`` (in place)."""
    for _, layer in aligned_layers(model):
        layer.epoch = epoch
        layer.set_angle_scale(layer.rule.coefficient("angle", epoch) * angle_factor)


def add_weight_gradients(model: nn.Module, scale: float = 1.0, decay_in_optimizer: bool = False) -> None:
    """Add ``scale`` times the gradient of every aligned layer's quadratic forms of its kernels
    (``rule.weight_form`` at the layer's ``epoch``: decay, self) to B.grad, and to W.grad when the
    rule aligns W, in place (``core.primitives.add_quadratic_gradient``). ``decay_in_optimizer``:
    B's own term ``scale 2 bb B`` is left out, for B's optimizer to add as its weight decay
    (:func:`backward_decay` gives the coefficient). A layer without a forward since it was built
    (``last_input`` None) or without a trained B gets none, as in ``alignment_loss``.
    Each layer keeps its gradient buffer between calls (``weight_gradient_buffer``)."""
    for layer, (ww, bb, wb) in _weight_forms(model):
        W = layer.weight if layer.rule.align_forward_weight else layer.weight.detach()
        buffer = layer.__dict__.get("weight_gradient_buffer")
        layer.__dict__["weight_gradient_buffer"] = add_quadratic_gradient(
            W, layer.backward_weight, ww, bb, wb, scale, buffer, own_decay=not decay_in_optimizer
        )


def kernel_gradient_factor(model: nn.Module) -> float | None:
    """``wb`` when the gradient of every trained B's quadratic forms is ``2 bb B + wb W`` with one
    shared ``wb != 0``, no rule aligns W (W gets no term) and the backward left every ``B.grad`` None
    (sa's decay and self): then each B's whole gradient is ``scale (wb W + 2 bb B)``, which an
    optimizer can step on with ``B.grad = W`` (:func:`point_gradients_at_kernels`), a gradient
    factor ``scale wb`` and ``scale 2 bb`` as its weight decay, in no pass of its own. Else None."""
    layers = list(_trained(model))
    if any(layer.rule.align_forward_weight or layer.backward_weight.grad is not None for layer in layers):
        return None
    factors = {layer.rule.weight_form(layer.epoch)[2] for layer in layers}
    factor = factors.pop() if len(factors) == 1 else 0.0
    return factor or None


def point_gradients_at_kernels(model: nn.Module) -> list[torch.Tensor]:
    """Set ``B.grad = W`` (W detached: the same memory, no copy) for every trained B of
    :func:`kernel_gradient_factor`; returns those B, whose ``.grad`` the caller sets back to None
    once B's optimizer has stepped (before W's, which changes W in place)."""
    backward = []
    for layer in _trained(model):
        layer.backward_weight.grad = layer.weight.detach()
        backward.append(layer.backward_weight)
    return backward


def backward_decay(model: nn.Module) -> float | None:
    """``2 bb``: the coefficient of B in the gradient of the quadratic forms (its weight decay), when
    every trained B of a layer with a forward shares it (0 for a layer without a form); None when
    they differ or there is no such B."""
    decays = {2 * layer.rule.weight_form(layer.epoch)[1] for layer in _trained(model)}
    return decays.pop() if len(decays) == 1 else None


def _trained(model: nn.Module):
    """The aligned layers with a trained B and a forward since they were built."""
    for _, layer in aligned_layers(model):
        B = layer.backward_weight
        if B is not None and B.requires_grad and layer.last_input is not None:
            yield layer


def _weight_forms(model: nn.Module):
    """(layer, (ww, bb, wb)) of each of :func:`_trained`'s layers with a nonzero form."""
    for layer in _trained(model):
        form = layer.rule.weight_form(layer.epoch)
        if any(form):
            yield layer, form
