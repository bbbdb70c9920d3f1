"""The sign-symmetry plugin's math, loaded in process through the public hooks.

usf, brsf, frsf: after training steps, each layer's B equals its definition computed here
from W as the step's forward saw it (README.md): B = ||W|| (M * sign W) / ||M * sign W||
with M = 1 (usf), a U(0, 1) draw per forward reproduced from the seed (brsf), |B0| of the
conversion (frsf); and the backward used it (dx = dy B). sign: the learned rule's primitive.
"""

import neural_alignment_sign_symmetry as plugin
import pytest
import torch
from torch import nn

import neural_alignment as na
from neural_alignment import alignment_loss
from neural_alignment.core.context import AlignmentContext  # what a primitive is called with
from neural_alignment.registry import Registry

F64 = torch.float64


def registry() -> Registry:
    return Registry(autoload=False, extra_plugins=[plugin])  # the plugin in process, not installed


def rule(name: str, **overrides):
    reg = registry()
    return na.get_rule(name, registry=reg, **overrides), reg


def convnet() -> nn.Module:
    """Conv -> ReLU -> Linear -> ReLU -> Linear, float64."""
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 5), nn.ReLU(), nn.Linear(5, 4)
    ).double()


def converted(name: str) -> nn.Module:
    torch.manual_seed(0)
    return na.convert(convnet(), rule=name, registry=registry())


def layers(model):
    return [model[0], model[3], model[5]]


def expected_b(W: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """||W||_F (M * sign W) / ||M * sign W||_F, written out entry by entry on the host."""
    signs = torch.tensor([1.0 if w >= 0 else -1.0 for w in W.reshape(-1).tolist()], dtype=F64).view_as(W)
    direction = M * signs
    return direction * (W.pow(2).sum().sqrt() / direction.pow(2).sum().sqrt())


def train_steps(model, steps: int, seed_of_step=None):
    """SGD steps on W and biases (B has no gradient); returns, per step, each layer's W at the forward
    and the input x and output gradient of the last layer (to check dx = dy B)."""
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    seen = []
    for step in range(steps):
        torch.manual_seed(100 + step)
        x = torch.randn(8, 2, 4, 4, dtype=F64)
        targets = torch.randint(0, 4, (8,))
        weights = [layer.weight.detach().clone() for layer in layers(model)]
        if seed_of_step is not None:
            torch.manual_seed(seed_of_step(step))
        h = model[:5](x).detach().requires_grad_()
        logits = model[5](h)
        loss = nn.functional.cross_entropy(logits, targets)
        (dy,) = torch.autograd.grad(loss, logits, retain_graph=True)
        optimizer.zero_grad()
        loss.backward()
        seen.append((weights, dy, h.grad))
        optimizer.step()
    return seen


def test_usf_b_is_rms_of_w_times_its_sign_after_each_step():
    model = converted("usf")
    weights, dy, dh = train_steps(model, 3)[-1]  # after the last step
    for layer, W in zip(layers(model), weights, strict=True):
        torch.testing.assert_close(layer.backward_weight, expected_b(W, torch.ones_like(W)), rtol=1e-12, atol=0)
        assert layer.backward_weight.abs().unique().numel() == 1
    torch.testing.assert_close(dh, dy @ model[5].backward_weight, rtol=1e-12, atol=1e-15)  # the backward used B


def test_brsf_redraws_uniform_magnitudes_every_batch():
    model = converted("brsf")
    seed = lambda step: 7 + step  # noqa: E731
    history = []
    for step, (weights, dy, dh) in enumerate(train_steps(model, 2, seed_of_step=seed)):  # noqa: B007 (used below)
        torch.manual_seed(seed(step))  # the draws of that forward, in layer order
        draws = [torch.rand(W.shape, dtype=F64) for W in weights]
        history.append([expected_b(W, M) for W, M in zip(weights, draws, strict=True)])
    for layer, B in zip(layers(model), history[-1], strict=True):
        torch.testing.assert_close(layer.backward_weight, B, rtol=1e-12, atol=0)
    assert not torch.allclose(history[0][2].abs() / history[0][2].norm(), history[1][2].abs() / history[1][2].norm())
    torch.testing.assert_close(dh, dy @ model[5].backward_weight, rtol=1e-12, atol=1e-15)


def test_frsf_keeps_the_magnitudes_drawn_at_conversion():
    model = converted("frsf")
    initial = [layer.backward_weight.detach().abs().clone() for layer in layers(model)]
    weights, dy, dh = train_steps(model, 3)[-1]  # after the last step
    for layer, W, M in zip(layers(model), weights, initial, strict=True):
        torch.testing.assert_close(layer.backward_weight, expected_b(W, M), rtol=1e-12, atol=0)
    torch.testing.assert_close(dh, dy @ model[5].backward_weight, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name", ["usf", "brsf", "frsf"])
def test_sign_rules_have_no_trainable_b_and_no_regularizer(name):
    model = converted(name)
    model(torch.randn(2, 2, 4, 4, dtype=F64))
    assert all(not layer.backward_weight.requires_grad for layer in layers(model))
    assert alignment_loss(model).item() == 0.0


def test_sign_primitive_value_and_gradient_match_the_formula():
    built, reg = rule("sign_symmetry", align_forward_weight=True)  # ctx.W attached: the primitive must detach it
    linear = na.convert(torch.nn.Linear(5, 3).double(), rule=built, registry=reg)
    linear(torch.randn(4, 5, dtype=F64))
    W, B = linear.weight.detach(), linear.backward_weight
    target = torch.sign(W) * W.abs().mean()
    value = reg.get("primitives", "sign")(AlignmentContext(linear, built))
    torch.testing.assert_close(value, ((B.detach() - target) ** 2).sum(), rtol=0, atol=1e-12)
    value.backward()
    torch.testing.assert_close(B.grad, 2 * (B.detach() - target), rtol=0, atol=1e-12)
    assert linear.weight.grad is None  # W is detached: only B learns


def test_training_the_sign_symmetry_rule_makes_b_sign_concordant_with_w():
    torch.manual_seed(0)
    built, reg = rule("sign_symmetry")
    linear = na.convert(torch.nn.Linear(8, 6), rule=built, registry=reg)
    optimizer = torch.optim.SGD([linear.backward_weight], lr=0.1)
    for _ in range(100):
        linear(torch.randn(16, 8))
        optimizer.zero_grad()
        alignment_loss(linear).backward()
        optimizer.step()
    W, B = linear.weight.detach(), linear.backward_weight.detach()
    assert torch.equal(torch.sign(B), torch.sign(W))
    torch.testing.assert_close(B, torch.sign(W) * W.abs().mean(), rtol=0, atol=1e-4)
