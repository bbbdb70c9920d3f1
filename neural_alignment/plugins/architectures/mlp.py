"""``mlp``: a fully connected network, input flattened.

h_0 = flatten(x),  h_k = act(W_k h_{k-1} + b_k) for each hidden width,  logits = W_out h_K + b_out
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn

from neural_alignment.core.errors import UserError
from neural_alignment.core.options import checked_options
from neural_alignment.plugins.architectures.common import positive_ints

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "sigmoid": nn.Sigmoid}


@checked_options("architecture 'mlp'")
def mlp(
    num_classes: int,
    in_shape: Sequence[int],
    *,
    hidden: Sequence[int] = (256, 256),
    activation: str = "relu",
    bias: bool = True,
) -> nn.Sequential:
    """Multilayer perceptron: flatten, then Linear+activation per ``hidden`` width, then a Linear classifier."""
    widths = positive_ints(hidden, "hidden", "mlp")
    if activation not in ACTIVATIONS:
        raise UserError(f"unknown activation {activation!r} for architecture 'mlp'; valid: {', '.join(ACTIVATIONS)}")
    layers: list[nn.Module] = [nn.Flatten()]
    fan_in = math.prod(int(d) for d in in_shape)
    for width in widths:
        layers += [nn.Linear(fan_in, width, bias=bias), ACTIVATIONS[activation]()]
        fan_in = width
    layers.append(nn.Linear(fan_in, num_classes, bias=bias))
    return nn.Sequential(*layers)
