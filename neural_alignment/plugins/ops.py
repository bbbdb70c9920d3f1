"""Built-in ops: ``nn.Linear`` -> ``AlignedLinear`` and ``nn.Conv2d`` -> ``AlignedConv2d``.

The public classes (which also take a rule by name) are registered, so a converted layer is an
instance of ``neural_alignment.AlignedLinear`` / ``AlignedConv2d``.
"""

from torch import nn

from neural_alignment.api import AlignedConv2d, AlignedLinear
from neural_alignment.core.layers import OpSpec
from neural_alignment.registry.markers import hookimpl


@hookimpl
def register_ops(register):
    register("linear", OpSpec(nn.Linear, AlignedLinear.from_module), "nn.Linear -> AlignedLinear (dx = dy B)")
    register(
        "conv2d",
        OpSpec(nn.Conv2d, AlignedConv2d.from_module),
        "nn.Conv2d -> AlignedConv2d (dx = conv_transpose2d(dy, B))",
    )
