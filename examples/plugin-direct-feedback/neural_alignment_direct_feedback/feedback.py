"""Direct feedback alignment (Nokland, 2016): every layer's error comes from the output error.

With e the gradient of the loss at the network's output (the output gradient of the last
aligned layer to run forward, [N, C] after flattening), each aligned layer l gets as the
gradient of its input x_l::

    dx_l = e D_l        reshaped to x_l's shape,  D_l: [C, numel(x_l) / N]

in place of backprop's dy_l W_l (or feedback alignment's dy_l B_l). D_l is a fixed random
matrix of the layer, Glorot-uniform: entries U(-a, a), a = sqrt(6 / (C + numel(x_l)/N)).
Going back through the previous layer's activation (and pooling, ...) that is Nokland's
da_{l-1} = (e D_l) * f'(a_{l-1}): the hidden error of layer l-1 straight from e. Conv layers
alike: D_l maps e to the whole [channels, height, width] input (a dense matrix). dW and db
stay ``dy^T x`` and ``sum dy`` of the layer's own dy; the output layer's dy is e itself.

D_l is drawn when the layer first meets e (its shape needs C and x_l's size) from a seed the
layer draws at conversion (``direct_feedback_seed``, a persistent buffer: checkpoints restore
the same D_l). The layer's B is kept (the aligned op needs one) but unused.
"""

from __future__ import annotations

import math
import weakref

import torch
from torch import Tensor

from neural_alignment.core.feedback import Feedback

SEED_BUFFER = "direct_feedback_seed"
MATRIX_BUFFER = "direct_feedback_matrix"


def feedback_matrix(seed: int, outputs: int, inputs: int, like: Tensor) -> Tensor:
    """D: [outputs, inputs], Glorot-uniform U(-a, a) with a = sqrt(6 / (outputs + inputs)), from ``seed``,
    in ``like``'s dtype and device."""
    generator = torch.Generator().manual_seed(seed)
    bound = math.sqrt(6.0 / (outputs + inputs))
    D = (torch.rand(outputs, inputs, generator=generator, dtype=torch.float64) * 2 - 1) * bound
    return D.to(device=like.device, dtype=like.dtype)


class DirectFeedback(Feedback):
    """dx_l = e D_l: each layer's input gradient from the output error e through its own fixed D_l."""

    def __init__(self):
        self._output_layer = None  # weak reference to the last layer that ran forward
        self._error = None  # e of the current backward, [N, C]

    def attach(self, layer) -> None:
        layer.register_buffer(SEED_BUFFER, torch.randint(0, 2**62, (), dtype=torch.int64))

    def before_forward(self, layer) -> None:
        self._output_layer = weakref.ref(layer)

    def input_gradient(self, layer, dy: Tensor, input_shape: tuple[int, ...]) -> Tensor:
        if self._output_layer is not None and self._output_layer() is layer:
            self._error = dy.reshape(dy.shape[0], -1)
        e = self._error
        if e is None or e.shape[0] != dy.shape[0]:
            raise RuntimeError(
                "dfa: no output error for this backward: the last aligned layer to run forward (the output "
                "layer) must be on the loss's path, with its input requiring a gradient"
            )
        D = self.matrix(layer, e.shape[1], math.prod(input_shape[1:]), like=dy)
        return e.matmul(D).reshape(input_shape)

    @staticmethod
    def matrix(layer, outputs: int, inputs: int, like: Tensor) -> Tensor:
        """The layer's D_l ([outputs, inputs]), drawn from its seed on first use and kept as a
        (non-persistent) buffer."""
        D = getattr(layer, MATRIX_BUFFER, None)
        if D is None or D.shape != (outputs, inputs) or D.dtype != like.dtype:
            D = feedback_matrix(int(getattr(layer, SEED_BUFFER)), outputs, inputs, like)
            layer.register_buffer(MATRIX_BUFFER, D, persistent=False)
        return D
