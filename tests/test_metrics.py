"""layer_metrics and gradient_angle against hand computations; gradient_angle leaves no state."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from neural_alignment import get_rule
from neural_alignment.core.layers import AlignedConv2d, AlignedLinear
from neural_alignment.core.metrics import angle_degrees, gradient_angle, layer_metrics

F64 = torch.float64


def set_kernels(layer, W, B):
    with torch.no_grad():
        layer.weight.copy_(W)
        layer.backward_weight.copy_(B)


def test_layer_metrics_by_hand():
    lin = AlignedLinear(2, 2, rule=get_rule("fa"), dtype=F64)
    set_kernels(lin, torch.tensor([[3.0, 0.0], [0.0, 0.0]]), torch.tensor([[1.0, 1.0], [0.0, 0.0]]))
    conv = AlignedConv2d(1, 1, 2, rule=get_rule("kp"), dtype=F64)
    W = torch.tensor([[[[1.0, 2.0], [0.0, -1.0]]]])
    set_kernels(conv, W, -2 * W)
    model = nn.Sequential(lin, nn.ReLU(), AlignedLinear(2, 2, rule=get_rule("bp")), nn.Sequential(conv))
    metrics = layer_metrics(model)
    assert metrics.keys() == {"0", "2", "3.0"}
    assert metrics["0"]["weight_angle"] == pytest.approx(45.0, abs=1e-12)
    assert metrics["0"]["norm_ratio"] == pytest.approx(math.sqrt(2) / 3, abs=1e-12)
    assert metrics["3.0"]["weight_angle"] == pytest.approx(180.0, abs=1e-12)
    assert metrics["3.0"]["norm_ratio"] == pytest.approx(2.0, abs=1e-12)
    assert metrics["2"] == {"weight_angle": 0.0, "norm_ratio": 1.0}


def test_angle_is_accurate_near_zero():
    a = torch.randn(1000, dtype=F64)
    b = a.clone()
    b[0] += 1e-6 * a.norm()
    expected = math.degrees(math.asin(1e-6 * math.sqrt(1 - (a[0] / a.norm()).item() ** 2)))
    assert angle_degrees(a, a) == 0.0
    assert angle_degrees(a, b) == pytest.approx(expected, rel=1e-4)


def two_layer_net(rule_name="fa"):
    torch.manual_seed(0)
    return nn.Sequential(
        AlignedLinear(4, 6, rule=get_rule(rule_name), dtype=F64),
        nn.Tanh(),
        AlignedLinear(6, 3, rule=get_rule(rule_name), dtype=F64),
    )


def test_gradient_angle_by_hand():
    net = two_layer_net()
    x, t = torch.randn(5, 4, dtype=F64), torch.randn(5, 3, dtype=F64)
    (W1, B1), (W2, B2) = [(m.weight.detach(), m.backward_weight.detach()) for m in (net[0], net[2])]
    h = torch.tanh(x @ W1.T + net[0].bias.detach())
    dy = 2 * (h @ W2.T + net[2].bias.detach() - t) / t.numel()  # d mse / d y
    fake_h, true_h = dy @ B2, dy @ W2
    fake_x, true_x = (fake_h * (1 - h**2)) @ B1, (true_h * (1 - h**2)) @ W1

    def degrees(a, b):
        return math.degrees(math.acos((a * b).sum() / (a.norm() * b.norm())))

    angles = gradient_angle(net, (x, t), F.mse_loss)
    assert angles.keys() == {"0", "2"}
    assert angles["2"] == pytest.approx(degrees(fake_h, true_h), abs=1e-8)
    assert angles["0"] == pytest.approx(degrees(fake_x, true_x), abs=1e-8)
    assert angles["2"] > 1.0 and angles["0"] > 1.0


def test_gradient_angle_is_zero_when_tied_and_leaves_no_state():
    torch.manual_seed(1)
    rule = get_rule("kp")
    net = nn.Sequential(
        AlignedConv2d(2, 3, 3, padding=1, rule=rule, dtype=F64),
        nn.BatchNorm2d(3, dtype=F64),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Flatten(),
        AlignedLinear(3 * 16, 2, rule=rule, dtype=F64),
    )
    for layer in (net[0], net[5]):
        with torch.no_grad():
            layer.backward_weight.copy_(layer.weight)
    x, t = torch.randn(4, 2, 4, 4, dtype=F64), torch.randint(0, 2, (4,))
    net(x[:2])
    remembered = [(m.last_input, m.last_output) for m in (net[0], net[5])]
    stats = {n: b.clone() for n, b in net.named_buffers()}
    rng = torch.get_rng_state()

    angles = gradient_angle(net, (x, t), F.cross_entropy)

    assert angles.keys() == {"0", "5"}
    assert all(a < 1e-6 for a in angles.values())  # same dropout masks in both passes
    assert all(p.grad is None for p in net.parameters())
    assert all(torch.equal(b, stats[n]) for n, b in net.named_buffers())
    assert torch.equal(torch.get_rng_state(), rng)
    for m, (x_seen, y_seen) in zip((net[0], net[5]), remembered, strict=True):
        assert m.last_input is x_seen and m.last_output is y_seen
    assert not net[0]._forward_pre_hooks


def test_gradient_angle_keeps_a_buffer_a_layer_registers_during_the_passes():
    class Lazy(nn.Module):
        """Registers a buffer on its first forward (as direct feedback's matrix is drawn on first use)."""

        def forward(self, x):
            if not hasattr(self, "drawn"):
                self.register_buffer("drawn", torch.ones(3, dtype=F64))
            return x

    torch.manual_seed(2)
    net = nn.Sequential(Lazy(), AlignedLinear(3, 2, rule=get_rule("fa"), dtype=F64))
    angles = gradient_angle(net, (torch.randn(4, 3, dtype=F64), torch.randint(0, 2, (4,))), F.cross_entropy)
    assert angles["1"] > 0 and torch.equal(net[0].drawn, torch.ones(3, dtype=F64))
