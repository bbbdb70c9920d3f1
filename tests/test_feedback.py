"""The feedback extension point (core/feedback.py), as a third plugin would rely on it.

A test feedback registered through the public hooks (``register_rules`` with
``RuleSpec(feedback=...)``) records every call; the checks are the contract of
docs/internals.md: ``attach`` once per layer, its buffers checkpointed and optional when
loading; ``before_forward`` under no_grad in forward order, only with gradients enabled;
``input_gradient`` in backward order with the layer's dy and input shape, its dx replacing
dy B exactly while dW, db (and kp's dB) stay ordinary; None keeps dy B; ``native_backward``
and ``gradient_angle``'s reference pass turn it off.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from neural_alignment import hookimpl
from neural_alignment.core.convert import convert_modules
from neural_alignment.core.feedback import Feedback, native_backward
from neural_alignment.core.metrics import gradient_angle
from neural_alignment.core.rules import RuleSpec, build_rule
from neural_alignment.registry import Registry

F64 = torch.float64


class ScaledFeedback(Feedback):
    """dx = scale * dy B (scale a per-layer buffer attached at build); records every call."""

    def __init__(self, replace: bool = True):
        self.replace = replace
        self.calls: list[tuple[str, object]] = []

    def attach(self, layer) -> None:
        layer.register_buffer("feedback_scale", torch.tensor(3.0, dtype=layer.weight.dtype))
        self.calls.append(("attach", layer))

    def before_forward(self, layer) -> None:
        self.calls.append(("before_forward", layer, torch.is_grad_enabled()))

    def input_gradient(self, layer, dy, input_shape):
        self.calls.append(("input_gradient", layer, dy.detach().clone(), input_shape))
        if not self.replace:
            return None
        B = layer.backward_weight.detach()
        if isinstance(layer, nn.Conv2d):
            dx = torch.nn.grad.conv2d_input(
                input_shape, B, dy, layer.stride, layer.padding, layer.dilation, layer.groups
            )
        else:
            dx = dy @ B
        return layer.feedback_scale * dx


class ScaledPlugin:
    def __init__(self, feedback: Feedback, **spec):
        self.spec = RuleSpec("scaled", feedback=feedback, **{"trains_backward_weight": False, **spec})

    @hookimpl
    def register_rules(self, register):
        register("scaled", self.spec)


def registry_with(feedback: Feedback, **spec) -> Registry:
    return Registry(autoload=False, extra_plugins=[ScaledPlugin(feedback, **spec)])


def converted(registry: Registry, model: nn.Module, **overrides) -> nn.Module:
    rule = build_rule(registry.get("rules", "scaled"), registry.catalog("primitives"), **overrides)
    return convert_modules(model, rule, [registry.get("ops", name) for name in registry.catalog("ops")])


def small_convnet() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(3 * 3 * 3, 4),
        nn.Tanh(),
        nn.Linear(4, 5),
    ).double()


def test_input_gradient_replaces_dy_b_and_leaves_dw_db_ordinary():
    feedback = ScaledFeedback()
    model = converted(registry_with(feedback), small_convnet())
    conv, first, last = model[0], model[3], model[5]
    x = torch.randn(6, 2, 5, 5, dtype=F64, requires_grad=True)
    with torch.no_grad():
        a0 = conv(x)
        h0 = torch.relu(a0)
        a1 = first(h0.flatten(1))
        h1 = torch.tanh(a1)
    y = model(x)
    dy = torch.randn_like(y)
    y.backward(dy)
    # by hand: each layer's input gradient is 3 * (its dy) B, then back through the activation
    dh1 = 3 * dy @ last.backward_weight
    da1 = dh1 * (1 - h1**2)
    dh0 = (3 * da1 @ first.backward_weight).view_as(h0)
    da0 = dh0 * (a0 > 0)
    dx = 3 * torch.nn.grad.conv2d_input(x.shape, conv.backward_weight, da0, 2, 1)
    torch.testing.assert_close(x.grad, dx, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(last.weight.grad, dy.t() @ h1, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(first.weight.grad, da1.t() @ h0.flatten(1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(first.bias.grad, da1.sum(0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        conv.weight.grad, torch.nn.grad.conv2d_weight(x, conv.weight.shape, da0, 2, 1), rtol=1e-12, atol=1e-12
    )
    torch.testing.assert_close(conv.bias.grad, da0.sum((0, 2, 3)), rtol=1e-12, atol=1e-12)


def test_call_order_arguments_and_no_grad():
    feedback = ScaledFeedback()
    model = converted(registry_with(feedback), small_convnet())
    layers = [model[0], model[3], model[5]]
    assert [c[:2] for c in feedback.calls] == [("attach", layer) for layer in layers]
    feedback.calls.clear()
    x = torch.randn(4, 2, 5, 5, dtype=F64, requires_grad=True)
    y = model(x)
    assert [c for c in feedback.calls] == [("before_forward", layer, False) for layer in layers]  # under no_grad
    feedback.calls.clear()
    dy = torch.randn_like(y)
    y.backward(dy)
    calls = [c for c in feedback.calls if c[0] == "input_gradient"]
    assert [c[1] for c in calls] == layers[::-1]  # backward order, output layer first
    torch.testing.assert_close(calls[0][2], dy)  # the output layer's dy is the output gradient
    assert [c[3] for c in calls] == [(4, 4), (4, 27), (4, 2, 5, 5)]
    feedback.calls.clear()
    with torch.no_grad():
        model(x)
    assert feedback.calls == []  # nothing runs without gradients


def test_input_gradient_none_keeps_dy_b_and_kp_transport():
    feedback = ScaledFeedback(replace=False)
    torch.manual_seed(1)
    reference = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    model = converted(registry_with(feedback, weights={"angle": 1.0}, trains_backward_weight=True), reference)
    x = torch.randn(7, 5, dtype=F64, requires_grad=True)
    y = model(x)
    dy = torch.randn_like(y)
    y.backward(dy)
    first, last = model[0], model[2]
    h = torch.tanh(first(x)).detach()
    dh = dy @ last.backward_weight.detach()
    torch.testing.assert_close(x.grad, (dh * (1 - h**2)) @ first.backward_weight.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(last.backward_weight.grad, last.weight.grad)  # kp's dB = angle_scale dW, scale 1


def test_attached_state_is_checkpointed_and_optional_on_load():
    model = converted(registry_with(ScaledFeedback()), small_convnet())
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert "0.feedback_scale" in state and "5.feedback_scale" in state
    model[0].feedback_scale.fill_(7.0)
    model.load_state_dict(state)
    assert model[0].feedback_scale.item() == 3.0
    model.load_state_dict(small_convnet().state_dict())  # torch's own state dict: strict load works
    assert model[0].feedback_scale.item() == 3.0


def test_native_backward_and_gradient_angle_reference_are_true_backprop():
    feedback = ScaledFeedback()
    model = converted(registry_with(feedback), small_convnet())
    x = torch.randn(4, 2, 5, 5, dtype=F64, requires_grad=True)
    with native_backward():
        model(x).sum().backward()
    assert feedback.calls[-1][0] == "attach"  # nothing called inside native_backward
    # gradient angle: the propagated pass uses the feedback (3 dy B), the reference pass is backprop;
    # with B := W the feedback's dx is 3x backprop's at the last layer, so the angle there is 0
    with torch.no_grad():
        for layer in (model[0], model[3], model[5]):
            layer.backward_weight.copy_(layer.weight)
    angles = gradient_angle(model, (x.detach(), torch.tensor([0, 1, 2, 3])), F.cross_entropy)
    assert angles["5"] < 1e-5 and angles["3"] < 1e-5
    assert any(c[0] == "input_gradient" for c in feedback.calls)
