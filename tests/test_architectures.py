"""Built-in architectures: torchvision's parameter counts, an independent count for every
ResNet, forward shapes, the stems, zero-init of the residual branch, plain torch layers only,
and option errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import neural_alignment as na
from neural_alignment.core.errors import UserError
from neural_alignment.registry import Registry

RESNET_DEPTHS = (18, 34, 50, 101, 152, 200)
RESNET_NAMES = [f"resnet{d}{suffix}" for suffix in ("", "_v2") for d in RESNET_DEPTHS]


@pytest.fixture(scope="module")
def archs():
    return Registry(autoload=False).catalog("architectures")


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def on_meta(archs, name, *args, **options) -> nn.Module:
    """Build without allocating memory (shapes only): parameter counts and shape inference are exact."""
    with torch.device("meta"):
        return archs.get(name)(*args, **options)


def reference_resnet_params(depth: int, version: int, num_classes: int, in_channels: int, stem: str) -> int:
    """Parameter count written out from the papers' tables (He et al. 2015 Table 1; 2016 for v2)."""
    kind, counts = {
        18: ("basic", (2, 2, 2, 2)),
        34: ("basic", (3, 4, 6, 3)),
        50: ("bottleneck", (3, 4, 6, 3)),
        101: ("bottleneck", (3, 4, 23, 3)),
        152: ("bottleneck", (3, 8, 36, 3)),
        200: ("bottleneck", (3, 24, 36, 3)),
    }[depth]

    def bn(c):  # gamma and beta
        return 2 * c

    total = (7 * 7 if stem == "imagenet" else 3 * 3) * in_channels * 64 + (bn(64) if version == 1 else 0)
    c_in = 64
    for stage, (w, n) in enumerate(zip((64, 128, 256, 512), counts, strict=True)):
        for i in range(n):
            if kind == "basic":
                c_out = w
                convs = 9 * c_in * w + 9 * w * w
                bns = bn(w) + bn(w) if version == 1 else bn(c_in) + bn(w)
            else:
                c_out = 4 * w
                convs = c_in * w + 9 * w * w + w * 4 * w
                bns = bn(w) + bn(w) + bn(4 * w) if version == 1 else bn(c_in) + bn(w) + bn(w)
            if c_in != c_out or (stage > 0 and i == 0):  # 1x1 projection shortcut (+ BN in v1)
                convs += c_in * c_out
                bns += bn(c_out) if version == 1 else 0
            total += convs + bns
            c_in = c_out
    total += bn(c_in) if version == 2 else 0
    return total + c_in * num_classes + num_classes


def test_registered_names(archs):
    assert set(archs.names()) >= {"mlp", "convnet", "vit", *RESNET_NAMES}


@pytest.mark.parametrize("name, count", [("resnet18", 11_689_512), ("resnet50", 25_557_032)])
def test_resnet_v1_matches_torchvision_parameter_count(archs, name, count):
    assert n_params(archs.get(name)(1000, (3, 224, 224))) == count


def depth_and_version(name: str) -> tuple[int, int]:
    return int(name[len("resnet") :].split("_")[0]), 2 if name.endswith("_v2") else 1


@pytest.mark.parametrize("name", RESNET_NAMES)
def test_every_resnet_parameter_count(archs, name):
    model = on_meta(archs, name, 7, (2, 64, 64))
    assert n_params(model) == reference_resnet_params(*depth_and_version(name), 7, 2, "imagenet")


@pytest.mark.parametrize(
    "name, stem",
    [("resnet18", "small"), ("resnet18_v2", "imagenet"), ("resnet50", "imagenet"), ("resnet50_v2", "small")],
)
def test_resnet_output_shape_and_small_stem_count(archs, name, stem):
    model = on_meta(archs, name, 7, (2, 40, 40), stem=stem)
    assert n_params(model) == reference_resnet_params(*depth_and_version(name), 7, 2, stem)
    assert model(torch.empty(3, 2, 40, 40, device="meta")).shape == (3, 7)


def test_reference_count_agrees_with_torchvision():
    # the independent formula above, anchored on torchvision's published counts
    assert reference_resnet_params(18, 1, 1000, 3, "imagenet") == 11_689_512
    assert reference_resnet_params(50, 1, 1000, 3, "imagenet") == 25_557_032


def test_resnet_forward_backward_on_tiny_images(archs):
    torch.manual_seed(0)
    model = archs.get("resnet18_v2")(5, (3, 16, 16), stem="small")
    out = model(torch.randn(2, 3, 16, 16))
    assert out.shape == (2, 5)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize(
    "name, entries, keys",
    [
        (
            "resnet18",
            122,
            [
                "conv1.weight",
                "bn1.running_mean",
                "layer1.0.conv2.weight",
                "layer2.0.downsample.0.weight",
                "layer4.1.bn2.num_batches_tracked",
                "fc.bias",
            ],
        ),
        (
            "resnet50",
            320,
            ["layer1.0.downsample.1.running_var", "layer3.5.conv3.weight", "layer4.2.bn3.weight", "fc.weight"],
        ),
    ],
)
def test_v1_state_dict_uses_torchvision_names(archs, name, entries, keys):
    state = on_meta(archs, name, 1000, (3, 224, 224)).state_dict()
    assert len(state) == entries and all(key in state for key in keys)


def test_stems(archs):
    big = archs.get("resnet18")(10, (3, 64, 64))
    small = archs.get("resnet18")(10, (1, 64, 64), stem="small")
    assert (big.conv1.kernel_size, big.conv1.stride, type(big.maxpool)) == ((7, 7), (2, 2), nn.MaxPool2d)
    assert (small.conv1.kernel_size, small.conv1.stride, type(small.maxpool)) == ((3, 3), (1, 1), nn.Identity)
    assert small.conv1.in_channels == 1
    x = torch.randn(1, 3, 64, 64)
    # ImageNet stem: /2 conv, /2 pool -> 16 px into layer1; small stem keeps 64 px
    assert big.layer1(big.maxpool(big.relu(big.bn1(big.conv1(x))))).shape[-1] == 16
    assert small.layer1(small.maxpool(small.relu(small.bn1(small.conv1(x[:, :1]))))).shape[-1] == 64


def test_v2_is_pre_activation(archs):
    v1, v2 = archs.get("resnet18")(10, (3, 32, 32)), archs.get("resnet18_v2")(10, (3, 32, 32))
    assert isinstance(v1.bn1, nn.BatchNorm2d) and isinstance(v1.bn_final, nn.Identity)
    assert isinstance(v2.bn1, nn.Identity) and isinstance(v2.bn_final, nn.BatchNorm2d)
    block = v2.layer2[0]
    # v2 block's first BN sees the block input (in channels), v1's sees the conv output
    assert block.bn1.num_features == 64 and v1.layer2[0].bn1.num_features == 128


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "resnet18_v2", "resnet50_v2"])
def test_zero_init_residual_makes_blocks_start_as_their_shortcut(archs, name):
    torch.manual_seed(0)
    v2 = name.endswith("_v2")
    for zero_init in (True, False):
        model = archs.get(name)(10, (3, 16, 16), stem="small", zero_init_residual=zero_init).eval()
        for block in (model.layer1[1], model.layer2[0]):  # identity shortcut, projection shortcut
            x = torch.randn(2, block.conv1.in_channels, 8, 8)
            if block.downsample is None:
                shortcut = x if v2 else torch.relu(x)
            elif v2:
                shortcut = block.downsample(torch.relu(block.bn1(x)))
            else:
                shortcut = torch.relu(block.downsample(x))
            with torch.no_grad():
                same = torch.allclose(block(x), shortcut, atol=1e-6)
            assert same is zero_init


def test_only_plain_torch_layers_hold_parameters(archs):
    plain = (nn.Conv2d, nn.Linear, nn.BatchNorm2d)
    for name in ("mlp", "convnet", "resnet18", "resnet50_v2"):
        model = on_meta(archs, name, 10, (3, 32, 32))
        holders = [m for m in model.modules() if list(m.parameters(recurse=False))]
        assert holders and all(type(m) in plain for m in holders), name


def test_mlp_layers_and_forward(archs):
    model = archs.get("mlp")(10, (1, 8, 8), hidden=[32, 16], activation="tanh")
    linears = [m for m in model if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(64, 32), (32, 16), (16, 10)]
    assert sum(isinstance(m, nn.Tanh) for m in model) == 2
    x = torch.randn(4, 1, 8, 8)
    expected = linears[2](torch.tanh(linears[1](torch.tanh(linears[0](x.flatten(1))))))
    torch.testing.assert_close(model(x), expected)
    assert archs.get("mlp")(3, (5,), hidden=[]).forward(torch.randn(2, 5)).shape == (2, 3)


def test_convnet_has_batchnorm_and_fits_its_input(archs):
    model = archs.get("convnet")(10, (1, 28, 28))
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(bns) == len(convs) == 2 and all(c.bias is None for c in convs)
    assert model.classifier[-1].in_features == 64 * 7 * 7
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    small = archs.get("convnet")(4, (3, 8, 8), channels=[8, 8, 8], hidden=[16], batchnorm=False)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in small.modules())
    assert small(torch.randn(2, 3, 8, 8)).shape == (2, 4)


def test_convnet_blocks_per_stage_deepens_without_shrinking_the_image(archs):
    deep = archs.get("convnet")(10, (1, 28, 28), channels=[4, 8], blocks_per_stage=3)
    convs = [(name, m) for name, m in deep.named_modules() if isinstance(m, nn.Conv2d)]
    assert [name for name, _ in convs] == [f"features.block{k}.conv{j}" for k in (1, 2) for j in (1, 2, 3)]
    assert [(m.in_channels, m.out_channels) for _, m in convs] == [(1, 4), (4, 4), (4, 4), (4, 8), (8, 8), (8, 8)]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in deep.modules()) == 6
    assert sum(isinstance(m, nn.MaxPool2d) for m in deep.modules()) == 2
    assert deep.classifier[-1].in_features == 8 * 7 * 7 and deep(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    shallow = archs.get("convnet")(10, (1, 28, 28), channels=[4, 8])  # one per stage: the names it always had
    assert "features.block1.conv.weight" in shallow.state_dict()


def test_vit_is_patches_tokens_pre_norm_blocks_and_a_head_on_cls(archs):
    torch.manual_seed(0)
    model = archs.get("vit")(10, (1, 28, 28), patch=7, dim=16, depth=2, heads=2, mlp_ratio=3).eval()
    x = torch.randn(3, 1, 28, 28)
    # independently, with torch's functional ops (its own multi-head attention function)
    t = F.conv2d(x, model.patch.weight, model.patch.bias, stride=7).flatten(2).transpose(1, 2)
    assert t.shape == (3, 16, 16)
    t = torch.cat([model.tokens.cls.expand(3, 1, 16), t], dim=1) + model.tokens.position
    for block in model.blocks:
        a = block.attn
        h = F.layer_norm(t, (16,), block.norm1.weight, block.norm1.bias).transpose(0, 1)
        attended = F.multi_head_attention_forward(
            h,
            h,
            h,
            16,
            2,
            a.in_proj_weight,
            a.in_proj_bias,
            None,
            None,
            False,
            0.0,
            a.out_proj.weight,
            a.out_proj.bias,
            training=False,
            need_weights=False,
        )[0]
        t = t + attended.transpose(0, 1)
        first, second = block.mlp[0], block.mlp[2]
        assert first.out_features == 48
        h = F.layer_norm(t, (16,), block.norm2.weight, block.norm2.bias)
        t = t + F.linear(F.gelu(F.linear(h, first.weight, first.bias)), second.weight, second.bias)
    logits = F.linear(
        F.layer_norm(t, (16,), model.norm.weight, model.norm.bias)[:, 0], model.head.weight, model.head.bias
    )
    torch.testing.assert_close(model(x), logits)
    report = na.conversion_of(na.convert(model, rule="fa", strict=True))  # the tokens are additive: not flagged
    assert [kind for _, kind in report.aligned] == ["Conv2d", *["MultiheadAttention", "Linear", "Linear"] * 2, "Linear"]


@pytest.mark.parametrize(
    "name, args, options, words",
    [
        ("mlp", (10, (1, 8, 8)), {"hiden": [3]}, ["'hiden'", "'mlp'", "hidden"]),
        ("resnet18", (10, (3, 32, 32)), {"zero_init": True}, ["'zero_init'", "zero_init_residual"]),
        ("resnet18", (10, (3, 32, 32)), {"stem": "cifar"}, ["'cifar'", "imagenet", "small"]),
        ("resnet18", (10, (784,)), {}, ["resnet18", "(784,)"]),
        ("convnet", (10, (1, 8, 8)), {"channels": [4, 4, 4, 4]}, ["too small"]),
        ("mlp", (10, (1, 8, 8)), {"hidden": [0]}, ["'hidden'", "positive"]),
        ("convnet", (10, (1, 8, 8)), {"blocks_per_stage": 0}, ["'blocks_per_stage'", "positive integer"]),
        ("mlp", (10, (1, 8, 8)), {"activation": "swish"}, ["'swish'", "relu"]),
        ("vit", (10, (1, 28, 28)), {"patch": 5}, ["patch=5", "28x28"]),
        ("vit", (10, (1, 28, 28)), {"heads": 3}, ["heads=3", "dim=64"]),
        ("vit", (10, (784,)), {}, ["'vit'", "(784,)"]),
    ],
)
def test_bad_options_are_user_errors_naming_them(archs, name, args, options, words):
    with pytest.raises(UserError) as info:
        archs.get(name)(*args, **options)
    assert all(word in str(info.value) for word in words), str(info.value)
