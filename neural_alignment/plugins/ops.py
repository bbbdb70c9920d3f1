"""Built-in ops: ``nn.Linear`` -> ``AlignedLinear``, every torch convolution ``nn.Conv{1,2,3}d`` /
``nn.ConvTranspose{1,2,3}d`` -> ``AlignedConv...`` (one op, ``core.ops.aligned_conv``) and
``nn.MultiheadAttention`` -> ``AlignedMultiheadAttention`` (aligned projections).

The public classes (which also take a rule by name) are registered, so a converted layer is an
instance of ``neural_alignment.AlignedLinear`` / ``AlignedConv2d`` / ...
"""

from torch import nn

from neural_alignment import api
from neural_alignment.core.layers import OpSpec
from neural_alignment.registry.markers import hookimpl

CONVOLUTIONS = {
    "conv1d": (nn.Conv1d, api.AlignedConv1d, "dx = conv_transpose1d(dy, B)"),
    "conv2d": (nn.Conv2d, api.AlignedConv2d, "dx = conv_transpose2d(dy, B)"),
    "conv3d": (nn.Conv3d, api.AlignedConv3d, "dx = conv_transpose3d(dy, B)"),
    "conv_transpose1d": (nn.ConvTranspose1d, api.AlignedConvTranspose1d, "dx = conv1d(dy, B)"),
    "conv_transpose2d": (nn.ConvTranspose2d, api.AlignedConvTranspose2d, "dx = conv2d(dy, B)"),
    "conv_transpose3d": (nn.ConvTranspose3d, api.AlignedConvTranspose3d, "dx = conv3d(dy, B)"),
}


@hookimpl
def register_ops(register):
    register("linear", OpSpec(nn.Linear, api.AlignedLinear.from_module), "nn.Linear -> AlignedLinear (dx = dy B)")
    for name, (source, aligned, backward) in CONVOLUTIONS.items():
        register(name, OpSpec(source, aligned.from_module), f"nn.{source.__name__} -> {aligned.__name__} ({backward})")
    register(
        "multihead_attention",
        OpSpec(nn.MultiheadAttention, api.AlignedMultiheadAttention.from_module),
        "nn.MultiheadAttention -> AlignedMultiheadAttention (its four projections dx = dy B; attention exact)",
    )
