"""``convnet``: a small convolutional network with BatchNorm, for 8-64 px images.

Each block (one per entry of ``channels``) is ``blocks_per_stage`` conv3x3-BN-ReLU layers of
that width and halves the resolution at its end::

    block_k(x) = maxpool_2x2(relu(bn_kn(conv_kn(... relu(bn_k1(conv_k1(x))) ...))))

then ``logits = classifier(flatten(blocks(x)))``, optionally with hidden Linear+ReLU layers.
``blocks_per_stage`` deepens the net without shrinking the image further: ``channels=[16, 32]``
with 1, 2, 4 per stage gives 2, 4, 8 conv layers (the depth comparison of docs/reproduction.md).
BatchNorm matters for the alignment rules: it keeps the scale of each layer's input fixed
while B drifts from W, which is what lets SA/KP train as well as backprop here.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import Tensor, nn

from neural_alignment.core.errors import UserError
from neural_alignment.core.options import checked_options
from neural_alignment.plugins.architectures.common import image_shape, positive_ints


class ConvNet(nn.Module):
    """conv-BN-ReLU-maxpool blocks, then a (hidden Linear+ReLU)* Linear classifier."""

    def __init__(self, num_classes: int, in_shape, channels, hidden, batchnorm: bool, blocks_per_stage: int = 1):
        super().__init__()
        in_channels, height, width = in_shape
        blocks = []
        for k, out_channels in enumerate(channels, start=1):
            parts: list[tuple[str, nn.Module]] = []
            for j in range(1, blocks_per_stage + 1):
                tag = "" if blocks_per_stage == 1 else str(j)  # one layer per stage keeps the names conv, bn, relu
                parts.append((f"conv{tag}", nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=not batchnorm)))
                if batchnorm:
                    parts.append((f"bn{tag}", nn.BatchNorm2d(out_channels)))
                parts.append((f"relu{tag}", nn.ReLU()))
                in_channels = out_channels
            parts.append(("pool", nn.MaxPool2d(2)))
            blocks.append((f"block{k}", nn.Sequential(OrderedDict(parts))))
            height, width = height // 2, width // 2
        self.features = nn.Sequential(OrderedDict(blocks))
        head: list[nn.Module] = [nn.Flatten()]
        fan_in = in_channels * height * width
        for size in hidden:
            head += [nn.Linear(fan_in, size), nn.ReLU()]
            fan_in = size
        head.append(nn.Linear(fan_in, num_classes))
        self.classifier = nn.Sequential(*head)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


@checked_options("architecture 'convnet'")
def convnet(
    num_classes: int,
    in_shape: Sequence[int],
    *,
    channels: Sequence[int] = (32, 64),
    hidden: Sequence[int] = (),
    batchnorm: bool = True,
    blocks_per_stage: int = 1,
) -> ConvNet:
    """Small ConvNet: per entry of ``channels`` ``blocks_per_stage`` conv3x3-BN-ReLU layers and a maxpool,
    then a Linear classifier."""
    shape = image_shape(in_shape, "convnet")
    widths = positive_ints(channels, "channels", "convnet")
    if min(shape[1:]) < 2 ** len(widths):
        raise UserError(
            f"architecture 'convnet' with {len(widths)} blocks halves the image {len(widths)} times;"
            f" in_shape {shape} is too small (use fewer 'channels')"
        )
    sizes = positive_ints(hidden, "hidden", "convnet")
    if isinstance(blocks_per_stage, bool) or not isinstance(blocks_per_stage, int) or blocks_per_stage < 1:
        raise UserError(
            f"option 'blocks_per_stage' of architecture 'convnet' must be a positive integer, got {blocks_per_stage!r}"
        )
    return ConvNet(num_classes, shape, widths, sizes, bool(batchnorm), blocks_per_stage)
