"""convert_modules on a torchvision-style ResNet and other containers: every nn.Linear/nn.Conv2d
replaced in place at any depth, same output, exclude/overrides, shared modules, bad names."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import neural_alignment as na
from neural_alignment import ConversionWarning, get_rule
from neural_alignment.core.convert import convert_modules
from neural_alignment.core.errors import UserError
from neural_alignment.core.layers import AlignedConv2d, AlignedLayer, AlignedLinear
from neural_alignment.registry import get_registry

F64 = torch.float64


def op_specs():
    return [entry.obj for entry in get_registry().catalog("ops").entries()]


class BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock: conv-bn-relu-conv-bn plus a (downsampled) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class TinyResNet(nn.Module):
    """A torchvision-style ResNet: stem, layer1..layer2 of BasicBlocks, avgpool, fc."""

    def __init__(self, num_classes: int = 5):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(BasicBlock(4, 4), BasicBlock(4, 4))
        self.layer2 = nn.Sequential(BasicBlock(4, 8, 2), BasicBlock(8, 8))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def native_layers(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if type(m) in (nn.Linear, nn.Conv2d)]


def test_resnet_converts_completely_in_place_with_the_same_output():
    torch.manual_seed(0)
    model = TinyResNet().to(F64).eval()
    x = torch.randn(2, 3, 32, 32, dtype=F64)
    before = model(x)
    names = native_layers(model)
    assert len(names) == 11  # stem, 4 + 5 block convs (one downsample), fc
    assert convert_modules(model, get_rule("kp"), op_specs()) is model
    assert native_layers(model) == []
    aligned = {n: m for n, m in model.named_modules() if isinstance(m, AlignedLayer)}
    assert sorted(aligned) == sorted(names)
    assert isinstance(model.layer2[0].downsample[0], AlignedConv2d) and isinstance(model.fc, AlignedLinear)
    assert all(m.weight.dtype == F64 and m.backward_weight.dtype == F64 for m in aligned.values())
    assert torch.equal(model(x), before)


def test_exclude_keeps_native_layers_and_overrides_set_per_layer_rules():
    torch.manual_seed(1)
    model = TinyResNet()
    convert_modules(model, get_rule("kp"), op_specs(), exclude=["fc"], overrides={"conv1": get_rule("fa")})
    assert type(model.fc) is nn.Linear
    assert model.conv1.rule.name == "fa" and model.layer1[0].conv1.rule.name == "kp"
    assert native_layers(model) == ["fc"]


def test_containers_shared_modules_and_a_bare_layer():
    torch.manual_seed(2)
    shared = nn.Linear(3, 3)
    model = nn.ModuleDict({"a": nn.Sequential(shared, nn.ReLU(), shared), "heads": nn.ModuleList([nn.Linear(3, 2)])})
    convert_modules(model, get_rule("sa"), op_specs())
    assert isinstance(model["a"][0], AlignedLinear) and model["a"][0] is model["a"][2]
    assert isinstance(model["heads"][0], AlignedLinear)
    bare = nn.Conv2d(1, 2, 3)
    converted = convert_modules(bare, get_rule("fa"), op_specs())
    assert isinstance(converted, AlignedConv2d) and torch.equal(converted.weight, bare.weight)


def test_a_shared_module_is_excluded_or_overridden_under_all_its_names():
    def model():
        shared = nn.Linear(3, 3)
        return nn.Sequential(shared, nn.ReLU(), shared)

    fa = get_rule("fa")
    with pytest.raises(UserError, match="exclude: '0' is one module shared with '2'"):
        convert_modules(model(), get_rule("sa"), op_specs(), exclude=["0"])
    with pytest.raises(UserError, match="overrides: '2' is one module shared with '0'"):
        convert_modules(model(), get_rule("sa"), op_specs(), overrides={"2": fa})
    excluded = convert_modules(model(), get_rule("sa"), op_specs(), exclude=["0", "2"])
    assert type(excluded[0]) is nn.Linear and excluded[0] is excluded[2]
    overridden = convert_modules(model(), get_rule("sa"), op_specs(), overrides={"0": fa, "2": fa})
    assert overridden[0].rule is fa and overridden[0] is overridden[2]


class MyLinear(nn.Linear):
    """A user's Linear subclass: convert cannot know what its forward does with W."""


class OwnWeight(nn.Module):
    """A module computing x @ W with its own parameter, beside a norm and an embedding."""

    def __init__(self):
        super().__init__()
        self.W = nn.Parameter(torch.randn(4, 4))
        self.scale = nn.Parameter(torch.ones(4))
        self.norm = nn.LayerNorm(4)
        self.embedding = nn.Embedding(3, 4)


class Additive(nn.Module):
    """Parameters added to the input (a position embedding): no weight transport."""

    weight_transport = False

    def __init__(self):
        super().__init__()
        self.position = nn.Parameter(torch.zeros(1, 5, 4))


def sequence_model():
    """The trial's model: Conv1d, batch-first attention, Linear layers, a Linear subclass, an own weight."""
    return nn.ModuleDict(
        {
            "conv": nn.Conv1d(4, 4, 3),
            "attn": nn.MultiheadAttention(4, 2, batch_first=True),
            "mine": MyLinear(4, 4),
            "own": OwnWeight(),
            "tokens": Additive(),
            "fc": nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)),
        }
    )


def test_convert_reports_every_module_left_on_backprop_once_and_strict_raises():
    model = sequence_model()
    with pytest.warns(ConversionWarning) as caught:
        converted = na.convert(model, rule="fa")
    assert len(caught) == 1
    message = str(caught[0].message)
    assert (
        "mine (MyLinear: a subclass of Linear" in message
        and "own (OwnWeight: holds its own weight parameter(s) W)" in message
    )
    assert message.count("; ") == 1  # those two only: no norm, embedding, 1-d or additive parameter
    report = na.conversion_of(converted)
    assert report.aligned == (
        ("conv", "Conv1d"),
        ("attn", "MultiheadAttention"),
        ("fc.0", "Linear"),
        ("fc.1", "Linear"),
    )
    assert [(path, kind) for path, kind, _ in report.left] == [("mine", "MyLinear"), ("own", "OwnWeight")]
    assert type(model["mine"]) is MyLinear and isinstance(model["attn"], na.AlignedMultiheadAttention)
    assert "converted to rule 'fa': 1 Conv1d, 1 MultiheadAttention, 2 Linear" in report.summary()
    with pytest.raises(UserError) as info:
        na.convert(sequence_model(), rule="fa", strict=True)
    assert "mine (MyLinear" in str(info.value) and "own (OwnWeight" in str(info.value)


def test_known_layers_and_excluded_modules_convert_without_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resnet = na.convert(TinyResNet(), rule="kp", strict=True)
        # an excluded attention's own weights and its Linear-subclass out_proj are not flagged
        model = na.convert(nn.Sequential(nn.MultiheadAttention(4, 2), nn.Linear(4, 4)), rule="fa", exclude=["0"])
        quiet = na.convert(nn.Sequential(MyLinear(2, 2)), rule="fa", warn=False)
    assert (
        len(na.conversion_of(resnet).aligned) == len(native_layers(TinyResNet())) and not na.conversion_of(resnet).left
    )
    assert na.conversion_of(model).excluded == (("0", "MultiheadAttention"),) and not na.conversion_of(model).left
    assert type(quiet[0]) is MyLinear and na.conversion_of(quiet).left[0][:2] == ("0", "MyLinear")
    attention = na.convert(nn.MultiheadAttention(4, 2), rule="sa", exclude=[""])
    assert (
        na.conversion_of(attention).excluded == (("", "MultiheadAttention"),) and not na.conversion_of(attention).left
    )


def test_a_converted_model_converts_again_only_to_its_own_rule():
    """Converting a converted model again: its aligned modules (layers and the attention) are
    reported as already aligned, not as left on backprop, without a warning; another rule is a
    UserError naming them, raised before anything changes."""
    model = na.convert(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.MultiheadAttention(4, 2)), rule="fa")
    layers = list(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = na.convert(model, rule="fa", strict=True)
    record = na.conversion_of(again)
    assert record.aligned == () and record.left == ()
    assert record.already == (("0", "AlignedConv2d", "fa"), ("2", "AlignedMultiheadAttention", "fa"))
    assert "already aligned: 0 (AlignedConv2d), 2 (AlignedMultiheadAttention)" in record.summary()
    with pytest.raises(UserError, match=r"already aligned with another rule: 0 \(AlignedConv2d, rule 'fa'\)"):
        na.convert(model, rule="sa")
    assert list(model) == layers and model[0].rule.name == "fa"


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(exclude=["fcc"]), ["exclude", "'fcc'", "'fc'"]),
        (dict(overrides={"bn1": None}), ["overrides", "'bn1'"]),
        (dict(exclude=["fc"], overrides={"fc": None}), ["'fc'", "excluded"]),
    ],
)
def test_bad_layer_names_are_user_errors(kwargs, words):
    with pytest.raises(UserError) as info:
        convert_modules(TinyResNet(), get_rule("kp"), op_specs(), **kwargs)
    for word in words:
        assert word in str(info.value)
