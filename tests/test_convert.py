"""convert_modules on a torchvision-style ResNet and other containers: every nn.Linear/nn.Conv2d
replaced in place at any depth, same output, exclude/overrides, shared modules, bad names."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from neural_alignment import get_rule
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


def test_subclasses_are_not_converted():
    class MyLinear(nn.Linear):
        pass

    model = nn.Sequential(MyLinear(2, 2))
    convert_modules(model, get_rule("kp"), op_specs())
    assert type(model[0]) is MyLinear


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
