"""Divergence: the error a NaN/inf run stops with, and the layer it names."""

from __future__ import annotations

import math

from torch import nn

from neural_alignment.core.errors import UserError


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the message names the step and the layer that blew up."""


def weight_norms(model: nn.Module) -> list[tuple[str, float]]:
    """(name, Frobenius norm) of every W and B: parameters of two or more dimensions named ``weight``
    or ``*_weight`` (``backward_weight``, an attention's ``in_proj_weight``/``backward_in_proj_weight``)."""
    return [
        (name, p.detach().double().norm().item())
        for name, p in model.named_parameters()
        if _is_kernel(name.rpartition(".")[2]) and p.dim() >= 2
    ]


def _is_kernel(name: str) -> bool:
    return name == "weight" or name.endswith("_weight")


def blown_up_layer(model: nn.Module) -> str:
    """The W or B whose norm is non-finite, else the largest one, as ``name (||.|| = value)``."""
    norms = weight_norms(model)
    bad = [(n, v) for n, v in norms if not math.isfinite(v)]
    name, value = bad[0] if bad else max(norms, key=lambda item: item[1])
    return f"{name} (norm {value:.4g})"
