"""The rules learn: on a two-layer linear network fitting a random linear teacher, with SGD on
W and the alignment optimizer on B, task and alignment loss in one backward per step."""

import math

import pytest
import torch
from torch import nn

from neural_alignment.core.alignment import alignment_loss, set_epoch
from neural_alignment.core.layers import AlignedLinear
from neural_alignment.core.rules import build_rule
from neural_alignment.plugins.primitives import BUILTIN_PRIMITIVES
from neural_alignment.plugins.rules import BUILTIN_RULES

SPECS = {spec.name: spec for spec in BUILTIN_RULES}
PRIMITIVES = {p.name: p for p in BUILTIN_PRIMITIVES}
IN, HIDDEN, OUT, BATCH, STEPS = 12, 10, 6, 32, 300


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny matrices: intra-op threads only contend (several times slower on a loaded machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def get_rule(name, **overrides):
    return build_rule(SPECS[name], PRIMITIVES, **overrides)


def weight_angle(W: torch.Tensor, B: torch.Tensor) -> float:
    """Degrees between vec(W) and vec(B), written out here independently of core.metrics."""
    cos = (W * B).sum() / (W.norm() * B.norm())
    return math.degrees(math.acos(float(cos.clamp(-1.0, 1.0))))


def train(rule, lr=0.05, alignment_rate=100.0, weight_decay=0.0, steps=STEPS):
    """Train and return the network. Loss = task + alignment_rate * alignment_loss, one backward;
    SGD(lr, weight_decay) on W, SGD(lr) on B (so kp's tied updates stay tied)."""
    torch.manual_seed(0)
    net = nn.Sequential(
        AlignedLinear(IN, HIDDEN, bias=False, rule=rule), AlignedLinear(HIDDEN, OUT, bias=False, rule=rule)
    )
    teacher = torch.randn(OUT, IN) / math.sqrt(IN)
    forward_weights = [layer.weight for layer in net]
    backward_weights = [layer.backward_weight for layer in net if layer.backward_weight.requires_grad]
    task_opt = torch.optim.SGD(forward_weights, lr=lr, weight_decay=weight_decay)
    align_opt = torch.optim.SGD(backward_weights, lr=lr) if backward_weights else None
    set_epoch(net, 0.0)
    for _ in range(steps):
        x = torch.randn(BATCH, IN)
        task = (net(x) - x @ teacher.T).pow(2).sum(1).mean()
        loss = task + alignment_rate * alignment_loss(net)
        task_opt.zero_grad()
        if align_opt:
            align_opt.zero_grad()
        loss.backward()
        task_opt.step()
        if align_opt:
            align_opt.step()
    return net


def angles(net):
    return [weight_angle(layer.weight.detach(), layer.backward_weight.detach()) for layer in net]


def test_sa_aligns_under_5_degrees():
    assert max(angles(train(get_rule("sa")))) < 5.0


def test_kp_aligns_under_5_degrees():
    # Kolen-Pollack: dB = dW from the op, and B's decay equals W's weight decay per step
    # (decay weight = weight_decay / 2, same lr): B - W shrinks by (1 - lr wd) each step.
    rule = get_rule("kp", weights={"decay": 0.1})
    net = train(rule, alignment_rate=1.0, weight_decay=0.2)
    assert max(angles(net)) < 5.0


@pytest.mark.parametrize("name", ["aa", "wm", "ia"])
def test_activation_rules_align_under_25_degrees(name):
    # White input noise (the paper's recipes use sigma ~ 0.6-0.95) makes amp's optimum B
    # proportional to W at every layer, whatever the hidden covariance.
    net = train(get_rule(name, noise_std=1.0))
    assert max(angles(net)) < 25.0


def test_fa_leaves_b_unchanged():
    rule = get_rule("fa")
    net = train(rule, steps=20)
    torch.manual_seed(0)  # train() reseeds with 0: rebuild the same initial B
    fresh = nn.Sequential(
        AlignedLinear(IN, HIDDEN, bias=False, rule=rule), AlignedLinear(HIDDEN, OUT, bias=False, rule=rule)
    )
    for trained, initial in zip(net, fresh, strict=True):
        assert torch.equal(trained.backward_weight, initial.backward_weight)
        assert trained.backward_weight.grad is None
        assert not torch.equal(trained.weight, initial.weight)  # W did train


def test_sa_fixed_point_is_b_equals_w():
    rule = get_rule("sa")
    layer = AlignedLinear(5, 4, bias=False, rule=rule, dtype=torch.float64)
    layer(torch.randn(3, 5, dtype=torch.float64))
    # closed form: d/dB [1e-3 (|W|^2 + |B|^2) - 2e-3 sum W*B] = 2e-3 (B - W), zero exactly at B = W
    (grad,) = torch.autograd.grad(rule.regularizer(layer), layer.backward_weight)
    torch.testing.assert_close(grad, 2e-3 * (layer.backward_weight - layer.weight).detach())
    with torch.no_grad():
        layer.backward_weight.copy_(layer.weight)
    (grad,) = torch.autograd.grad(rule.regularizer(layer), layer.backward_weight)
    assert torch.count_nonzero(grad) == 0
    # and gradient descent on B alone (W fixed) converges to W
    with torch.no_grad():
        layer.backward_weight.normal_()
    opt = torch.optim.SGD([layer.backward_weight], lr=100.0)
    for _ in range(200):
        opt.zero_grad()
        rule.regularizer(layer).backward()
        opt.step()
    torch.testing.assert_close(layer.backward_weight.detach(), layer.weight.detach(), rtol=0, atol=1e-6)
