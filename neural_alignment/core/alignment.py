"""Model-wide alignment: the alignment loss of the latest forward, and the epoch of every layer.

- ``alignment_loss(model) = sum over aligned layers l of l.rule.regularizer(l)``, each R_l at
  the layer's own ``epoch`` (a zero tensor when the model has none).
- ``set_epoch(model, epoch, angle_factor)`` sets ``layer.epoch`` and writes
  ``rule.coefficient("angle", epoch) * angle_factor`` into ``layer.angle_scale`` in place,
  so the op's delivered angle update follows the schedule without reallocating a tensor
  (torch.compile and XLA see the same buffer every step).
"""

from __future__ import annotations

import torch
from torch import nn

from neural_alignment.core.layers import aligned_layers


def alignment_loss(model: nn.Module) -> torch.Tensor:
    """sum_l R_l over the aligned layers, for their latest forward; zero when there is none."""
    terms = [layer.rule.regularizer(layer) for _, layer in aligned_layers(model)]
    if terms:
        return sum(terms[1:], terms[0])
    reference = next(model.parameters(), None)
    return torch.zeros(()) if reference is None else reference.new_zeros(())


def set_epoch(model: nn.Module, epoch: float, angle_factor: float = 1.0) -> None:
    """Set every aligned layer's ``epoch`` and fill its ``angle_scale`` with
    ``rule.coefficient("angle", epoch) * angle_factor`` (in place)."""
    for _, layer in aligned_layers(model):
        layer.epoch = epoch
        layer.angle_scale.fill_(layer.rule.coefficient("angle", epoch) * angle_factor)
