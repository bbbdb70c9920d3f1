"""ResNet v1 (post-activation, He et al. 2015) and v2 (pre-activation, He et al. 2016).

Layout (names as in torchvision, so v1 state dicts line up with torchvision's)::

    stem:   conv1 -> [bn1 -> relu  (v1 only)] -> maxpool       (ImageNet stem: 7x7/2 conv, 3x3/2 pool)
                                                               (small stem:    3x3/1 conv, no pool)
    body:   layer1..layer4, widths 64/128/256/512, strides 1/2/2/2, blocks per stage from DEPTHS
    head:   [bn_final -> relu  (v2 only)] -> global average pool -> fc

Blocks (``s`` the shortcut: identity, or a 1x1 strided projection when the shape changes)::

    v1 basic:       y = relu(bn2(conv2(relu(bn1(conv1(x))))) + s(x))            s = conv1x1 + BN
    v1 bottleneck:  y = relu(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x)))))))) + s(x))
    v2 basic:       a = relu(bn1(x));  y = conv2(relu(bn2(conv1(a)))) + s(a or x)   s = conv1x1
    v2 bottleneck:  a = relu(bn1(x));  y = conv3(relu(bn3(conv2(relu(bn2(conv1(a))))))) + s(a or x)

(the v2 shortcut takes the pre-activated ``a`` when it projects, ``x`` itself when it is the
identity). Bottlenecks use width w for conv1 (1x1) and conv2 (3x3, strided) and 4w for conv3.
``zero_init_residual`` sets the last BN's gamma of each block's residual branch to zero, so
every block starts as its shortcut (the branch is zero: v1 because bn*(.) = 0, v2 because
relu(0 + beta=0) = 0 feeds a bias-free conv).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from neural_alignment.core.errors import UserError
from neural_alignment.core.options import checked_options
from neural_alignment.plugins.architectures.common import image_shape

# depth -> (block kind, blocks per stage), from He et al. 2015 (Table 1) and 2016 (ResNet-200)
DEPTHS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
    200: ("bottleneck", (3, 24, 36, 3)),
}
STEMS = ("imagenet", "small")


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """v1 basic block: two 3x3 convs, each followed by BN; ReLU after the residual add."""

    expansion = 1

    def __init__(self, in_channels: int, width: int, stride: int):
        super().__init__()
        self.conv1 = conv3x3(in_channels, width, stride)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.downsample = projection(in_channels, width * self.expansion, stride, with_bn=True)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
    """v1 bottleneck: 1x1 reduce, 3x3 (strided), 1x1 expand x4, each followed by BN; ReLU after the add."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int):
        super().__init__()
        self.conv1 = conv1x1(in_channels, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, width * self.expansion)
        self.bn3 = nn.BatchNorm2d(width * self.expansion)
        self.relu = nn.ReLU()
        self.downsample = projection(in_channels, width * self.expansion, stride, with_bn=True)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class PreActBasicBlock(nn.Module):
    """v2 basic block: BN-ReLU-conv3x3 twice; the add is not followed by anything."""

    expansion = 1

    def __init__(self, in_channels: int, width: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = conv3x3(in_channels, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width)
        self.relu = nn.ReLU()
        self.downsample = projection(in_channels, width * self.expansion, stride, with_bn=False)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x: Tensor) -> Tensor:
        a = self.relu(self.bn1(x))
        shortcut = x if self.downsample is None else self.downsample(a)
        out = self.conv1(a)
        out = self.conv2(self.relu(self.bn2(out)))
        return out + shortcut


class PreActBottleneck(nn.Module):
    """v2 bottleneck: BN-ReLU-conv1x1, BN-ReLU-conv3x3 (strided), BN-ReLU-conv1x1 (x4); then the add."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = conv1x1(in_channels, width)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride)
        self.bn3 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, width * self.expansion)
        self.relu = nn.ReLU()
        self.downsample = projection(in_channels, width * self.expansion, stride, with_bn=False)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x: Tensor) -> Tensor:
        a = self.relu(self.bn1(x))
        shortcut = x if self.downsample is None else self.downsample(a)
        out = self.conv1(a)
        out = self.conv2(self.relu(self.bn2(out)))
        out = self.conv3(self.relu(self.bn3(out)))
        return out + shortcut


def projection(in_channels: int, out_channels: int, stride: int, with_bn: bool) -> nn.Module | None:
    """The shortcut's 1x1 strided projection (with BN in v1), or None when the identity fits."""
    if stride == 1 and in_channels == out_channels:
        return None
    conv = conv1x1(in_channels, out_channels, stride)
    return nn.Sequential(conv, nn.BatchNorm2d(out_channels)) if with_bn else nn.Sequential(conv)


Block = BasicBlock | Bottleneck | PreActBasicBlock | PreActBottleneck
BLOCKS: dict[tuple[int, str], type[Block]] = {
    (1, "basic"): BasicBlock,
    (1, "bottleneck"): Bottleneck,
    (2, "basic"): PreActBasicBlock,
    (2, "bottleneck"): PreActBottleneck,
}


class ResNet(nn.Module):
    """ResNet v1 or v2 of the given depth (see the module docstring for the layout)."""

    def __init__(
        self,
        depth: int,
        version: int,
        num_classes: int,
        in_channels: int = 3,
        stem: str = "imagenet",
        zero_init_residual: bool = False,
    ):
        super().__init__()
        kind, blocks_per_stage = DEPTHS[depth]
        block = BLOCKS[(version, kind)]
        post_activation = version == 1
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(3, stride=2, padding=1)
        else:
            self.conv1 = conv3x3(in_channels, 64)
            self.maxpool = nn.Identity()
        self.bn1: nn.Module = nn.BatchNorm2d(64) if post_activation else nn.Identity()
        self.relu: nn.Module = nn.ReLU() if post_activation else nn.Identity()

        channels = 64
        stages = []
        for stage, (width, count) in enumerate(zip((64, 128, 256, 512), blocks_per_stage, strict=True)):
            stride = 1 if stage == 0 else 2
            layers = []
            for _ in range(count):
                layers.append(block(channels, width, stride))
                channels, stride = width * block.expansion, 1
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages

        self.bn_final: nn.Module = nn.Identity() if post_activation else nn.BatchNorm2d(channels)
        self.relu_final: nn.Module = nn.Identity() if post_activation else nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        """He (fan-out) normal for convs, BN gamma 1 and beta 0, torch's default for fc (as torchvision)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Block):
                    nn.init.zeros_(m.last_bn.weight)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.relu_final(self.bn_final(x))
        return self.fc(self.avgpool(x).flatten(1))


def resnet_builder(depth: int, version: int):
    """The registered builder of ResNet-``depth`` v``version``:
    ``(num_classes, in_shape, *, stem, zero_init_residual)``."""
    name = resnet_name(depth, version)

    @checked_options(f"architecture {name!r}")
    def build(
        num_classes: int, in_shape: Sequence[int], *, stem: str = "imagenet", zero_init_residual: bool = False
    ) -> ResNet:
        channels = image_shape(in_shape, name)[0]
        if stem not in STEMS:
            raise UserError(f"unknown stem {stem!r} for architecture {name!r}; valid: {', '.join(STEMS)}")
        return ResNet(depth, version, num_classes, channels, stem, bool(zero_init_residual))

    build.__name__ = build.__qualname__ = name
    build.__doc__ = (
        f"ResNet-{depth} {'v2 (pre-activation)' if version == 2 else 'v1 (post-activation)'};"
        " stem='imagenet' (7x7/2 conv + maxpool) or 'small' (3x3/1 conv, for 28-64 px)"
    )
    return build


def resnet_name(depth: int, version: int) -> str:
    return f"resnet{depth}" if version == 1 else f"resnet{depth}_v2"


RESNETS = {resnet_name(depth, version): resnet_builder(depth, version) for version in (1, 2) for depth in DEPTHS}
