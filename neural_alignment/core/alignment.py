"""Model-wide alignment: the alignment loss of the latest forward, the gradients the trainer gives B
after the backward, and the epoch of every layer.

- ``alignment_loss(model) = sum over aligned layers l of l.rule.regularizer(l)``, each R_l at
  the layer's own ``epoch`` (a zero tensor when the model has none). With ``weight_terms=False``
  the quadratic forms of the kernels (decay, self) are left out, and
- ``add_weight_gradients(model, scale)``, called after the backward, adds ``scale`` times their
  gradient to B.grad (and W.grad when the rule aligns W) in closed form, in place: the
  trainer's step, equal to ``scale * alignment_loss(model)`` in the loss (tests/test_rules.py)
  without a graph or a kernel-sized temporary per layer; with ``decay_in_optimizer`` it leaves
  B's own decay ``2 bb B`` (``backward_decay(model)``) to B's optimizer's weight decay. Where
  every B's gradient is ``scale (wb W + 2 bb B)`` with one ``wb`` (sa), the trainer writes
  nothing: it sets ``B.grad = W`` (``gradient_multiples``) and B's optimizer steps on
  ``scale wb B.grad`` plus its weight decay (``ComponentOptimizer.set_gradient_factor``).
- ``deliver_angle_after_backward(model)`` moves Kolen-Pollack's angle update out of the op: B
  then enters it detached and takes ``angle_scale * W.grad`` after the backward, written out
  (``add_angle_gradients``) or, as sa's, by pointing ``B.grad`` at W.grad (``gradient_multiples``).
- ``set_epoch(model, epoch, angle_factor)`` sets ``layer.epoch`` and writes
  ``rule.coefficient("angle", epoch) * angle_factor`` into ``layer.angle_scale`` in place
  (``layer.set_angle_scale``), so the op's delivered angle update follows the schedule without
  reallocating a tensor (torch.compile and XLA see the same buffer every step); at exactly 1
  the op gets None and hands dW itself to B.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch import nn

from neural_alignment.core.layers import AlignedLayer, aligned_layers
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


def deliver_angle_after_backward(model: nn.Module) -> list[AlignedLayer]:
    """Set ``angle_in_backward = False`` on every aligned layer whose rule weighs ``angle`` (kp), whose
    B and W train, whose rule does not align W and whose W no other aligned layer shares: the op then
    takes B detached, and :func:`add_angle_gradients` or :func:`gradient_multiples` give B its angle
    update ``angle_scale * W.grad`` after the backward, W.grad being the task's dW alone there (the
    same update as the op's, summed over micro-batches alike). Returns those layers."""
    layers = [layer for _, layer in aligned_layers(model)]
    uses = Counter(id(layer.weight) for layer in layers)
    moved = []
    for layer in layers:
        B = layer.backward_weight
        if (
            layer.rule.uses_angle
            and not layer.rule.align_forward_weight
            and B is not None
            and B.requires_grad
            and layer.weight.requires_grad
            and uses[id(layer.weight)] == 1
        ):
            layer.angle_in_backward = False
            moved.append(layer)
    return moved


def add_angle_gradients(model: nn.Module) -> None:
    """``B.grad += angle_scale * W.grad`` for every trained B of a layer whose angle update comes
    after the backward (``angle_in_backward`` False, :func:`deliver_angle_after_backward`)."""
    for layer in _transported(model):
        dW, B = layer.weight.grad, layer.backward_weight
        if dW is None:  # W took no gradient this step: nor does B from the task
            continue
        if B.grad is None:
            B.grad = torch.mul(dW, layer.angle_scale_value)
        else:
            B.grad.add_(dW, alpha=layer.angle_scale_value)


def gradient_multiples(model: nn.Module, scale: float) -> tuple[float, list[tuple[torch.Tensor, torch.Tensor]]] | None:
    """``(k, [(B, K), ...])`` when every trained B's whole gradient is ``k K + 2 bb scale B`` with one
    shared ``k``, K a tensor the step already holds: W (sa: the forms' gradient ``scale wb W``, so
    ``k = scale wb``) or W.grad (kp delivered after the backward: ``k = angle_scale``), and the
    backward gave B nothing (``B.grad`` None). An optimizer then steps on ``B.grad = K`` with the
    gradient factor k and ``2 bb scale`` as its weight decay, in no pass of its own. Else None."""
    pairs, factors = [], set()
    for layer in _trained(model):
        B, (_, _, wb) = layer.backward_weight, layer.rule.weight_form(layer.epoch)
        if B.grad is not None or layer.rule.align_forward_weight:
            return None
        if layer.angle_after_backward and layer.weight.grad is not None and not wb:
            pairs.append((B, layer.weight.grad))
            factors.add(layer.angle_scale_value)
        elif wb and not layer.rule.uses_angle:
            pairs.append((B, layer.weight.detach()))
            factors.add(scale * wb)
        else:
            return None
    if len(factors) != 1:
        return None
    factor = factors.pop()
    return (factor, pairs) if factor else None


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


def _transported(model: nn.Module):
    """:func:`_trained`'s layers whose angle update comes after the backward."""
    for layer in _trained(model):
        if layer.angle_after_backward:
            yield layer


def _weight_forms(model: nn.Module):
    """(layer, (ww, bb, wb)) of each of :func:`_trained`'s layers with a nonzero form."""
    for layer in _trained(model):
        form = layer.rule.weight_form(layer.epoch)
        if any(form):
            yield layer, form
