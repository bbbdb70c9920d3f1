"""Aligned layers against native torch layers: every nn.Conv2d argument, B == W exactness and
B != W input gradients, rule-dependent B (bp/fa/kp), the KP step, state dicts, the layer
contract (last_input/last_output, project, reconstruct, angle_scale) and torch.compile."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from neural_alignment import get_rule
from neural_alignment.core.alignment import alignment_loss
from neural_alignment.core.layers import AlignedConv2d, AlignedLayer, AlignedLinear

F64 = torch.float64
EVEN_SAME = "ignore:Using padding='same' with even kernel"  # torch's own note: it pads a copy, as we do


def native_grads(module: nn.Module, weight: torch.Tensor, x: torch.Tensor, dy: torch.Tensor):
    """(y, dx, dW, db) of ``module`` run natively with ``weight`` in place of its own."""
    x = x.detach().requires_grad_()
    W = weight.detach().clone().requires_grad_()
    y = torch.func.functional_call(module, {"weight": W}, (x,))
    wrt = (x, W) + ((module.bias,) if module.bias is not None else ())
    return (y, *torch.autograd.grad(y, wrt, dy))


@st.composite
def conv_layer_args(draw):
    groups = draw(st.sampled_from([1, 2]))
    depthwise = draw(st.booleans())
    c_in = groups * draw(st.integers(1, 2))
    c_out = c_in if depthwise else groups * draw(st.integers(1, 2))
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    padding = draw(st.sampled_from(["same", "valid", 0, 1, 2, (1, 0), (0, 2)]))
    stride = 1 if padding == "same" else draw(st.sampled_from([1, 2, (1, 3)]))
    pad_mode = draw(st.sampled_from(["zeros", "reflect", "replicate", "circular"]))
    return dict(
        in_channels=c_in,
        out_channels=c_out,
        kernel_size=kernel,
        stride=stride,
        padding=padding,
        dilation=draw(st.sampled_from([1, 2, (2, 1)])),
        groups=c_in if depthwise else groups,
        bias=draw(st.booleans()),
        padding_mode=pad_mode,
    )


@pytest.mark.filterwarnings(EVEN_SAME)
@settings(max_examples=40, deadline=None)
@given(args=conv_layer_args(), seed=st.integers(0, 2**16))
def test_conv_layer_matches_native_for_every_argument(args, seed):
    torch.manual_seed(seed)
    native = nn.Conv2d(**args, dtype=F64)
    layer = AlignedConv2d.from_module(native, get_rule("fa"))
    x = torch.randn(2, args["in_channels"], 9, 8, dtype=F64, requires_grad=True)  # fits a 4-tap kernel at dilation 2
    y = layer(x)
    dy = torch.randn_like(y)
    got = torch.autograd.grad(y, [x, layer.weight] + ([layer.bias] if layer.bias is not None else []), dy)
    # dy flows back through B: the native input gradient of the same conv with weight B
    _ref_y, ref_dx_B, *_ = native_grads(native, layer.backward_weight, x, dy)
    _, _, ref_dW, *ref_db = native_grads(native, native.weight, x, dy)
    assert torch.equal(y, native(x))
    torch.testing.assert_close(got[0], ref_dx_B, rtol=0, atol=1e-10)
    for g, r in zip(got[1:], [ref_dW, *ref_db], strict=True):
        torch.testing.assert_close(g, r, rtol=0, atol=1e-10)
    # tied: B == W is exact backprop
    with torch.no_grad():
        layer.backward_weight.copy_(layer.weight)
    _, ref_dx_W, *_ = native_grads(native, native.weight, x, dy)
    (dx,) = torch.autograd.grad(layer(x), x, dy)
    torch.testing.assert_close(dx, ref_dx_W, rtol=0, atol=1e-10)


@pytest.mark.parametrize("x_shape", [(5, 4), (2, 3, 4)])
def test_linear_layer_dx_uses_B_and_is_backprop_when_tied(x_shape):
    torch.manual_seed(0)
    native = nn.Linear(4, 3, dtype=F64)
    layer = AlignedLinear.from_module(native, get_rule("fa"))
    x = torch.randn(*x_shape, dtype=F64, requires_grad=True)
    y = layer(x)
    dy = torch.randn_like(y)
    dx, dW, db = torch.autograd.grad(y, (x, layer.weight, layer.bias), dy)
    ref_y, ref_dx, ref_dW, ref_db = native_grads(native, native.weight, x, dy)
    assert torch.equal(y, ref_y)
    torch.testing.assert_close(dx, dy @ layer.backward_weight, rtol=0, atol=1e-12)
    torch.testing.assert_close(dW, ref_dW, rtol=0, atol=1e-10)
    torch.testing.assert_close(db, ref_db, rtol=0, atol=1e-10)
    with torch.no_grad():
        layer.backward_weight.copy_(layer.weight)
    (dx,) = torch.autograd.grad(layer(x), x, dy)
    torch.testing.assert_close(dx, ref_dx, rtol=0, atol=1e-10)


def make_layers(rule_name: str, **overrides):
    torch.manual_seed(0)
    rule = get_rule(rule_name, **overrides)
    return AlignedLinear(6, 5, rule=rule, dtype=F64), AlignedConv2d(3, 4, 3, padding=1, rule=rule, dtype=F64)


def test_parameters_follow_the_rule():
    for layer in make_layers("bp"):
        assert layer.backward_weight is None
        assert [n for n, _ in layer.named_parameters()] == ["weight", "bias"]
    for layer in make_layers("fa"):
        assert layer.backward_weight.shape == layer.weight.shape and not layer.backward_weight.requires_grad
    for layer in make_layers("sa"):
        B, W = layer.backward_weight, layer.weight
        assert B.requires_grad and B.dtype == W.dtype
        assert not torch.equal(B, W)  # sampled independently
        fan_in = W[0].numel()
        bound = 1 / math.sqrt(fan_in)  # kaiming_uniform_(a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        assert B.abs().max() <= bound and B.abs().max() > 0.5 * bound


def test_bp_layer_runs_native_ops():
    lin, conv = make_layers("bp")
    x = torch.randn(2, 6, dtype=F64)
    assert torch.equal(lin(x), F.linear(x, lin.weight, lin.bias))
    z = torch.randn(2, 3, 5, 5, dtype=F64)
    assert torch.equal(conv(z), F.conv2d(z, conv.weight, conv.bias, padding=1))
    assert lin(x).grad_fn.name() == "AddmmBackward0"


def two_layer_step(rule_name: str, **overrides):
    """One step's backward, (task + alignment).backward(), on a conv -> linear net."""
    lin, conv = make_layers(rule_name, **overrides)
    torch.manual_seed(1)
    x = torch.randn(2, 3, 2, 2, dtype=F64)
    net = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), nn.Linear(16, 6, dtype=F64), lin)
    task = net(x).square().mean()
    (task + alignment_loss(net)).backward()
    return lin, conv


def test_fa_and_wm_task_loss_gives_B_no_gradient():
    for layer in two_layer_step("fa"):
        assert layer.backward_weight.grad is None and layer.weight.grad is not None
    lin, _conv = make_layers("wm")
    x = torch.randn(2, 6, dtype=F64)
    lin(x).sum().backward()
    assert lin.backward_weight.grad is None


@pytest.mark.parametrize("angle", [1.0, 0.5])
def test_kp_step_gives_B_the_task_gradient_once(angle):
    for layer in two_layer_step("kp", weights={"decay": 0.0, "angle": angle}):
        assert layer.angle_scale.item() == angle
        torch.testing.assert_close(layer.backward_weight.grad, angle * layer.weight.grad, rtol=0, atol=0)


def natives():
    """Native twins of ``make_layers``' layers."""
    return nn.Linear(6, 5, dtype=F64), nn.Conv2d(3, 4, 3, padding=1, dtype=F64)


def test_state_dicts_load_both_ways():
    torch.manual_seed(2)
    for native, layer, back in zip(natives(), make_layers("kp"), natives(), strict=True):
        B0 = layer.backward_weight.detach().clone()
        layer.load_state_dict(native.state_dict(), strict=True)
        assert torch.equal(layer.weight, native.weight) and torch.equal(layer.bias, native.bias)
        assert torch.equal(layer.backward_weight, B0)  # a missing B keeps its init
        assert "angle_scale" not in layer.state_dict()
        result = back.load_state_dict(layer.state_dict(), strict=False)
        assert result.unexpected_keys == ["backward_weight"] and not result.missing_keys
        assert torch.equal(back.weight, layer.weight)
    for bp_layer, native in zip(make_layers("bp"), natives(), strict=True):
        native.load_state_dict(bp_layer.state_dict(), strict=True)
    source, target = make_layers("kp")[1], AlignedConv2d(3, 4, 3, padding=1, rule=get_rule("kp"), dtype=F64)
    target.load_state_dict(source.state_dict(), strict=True)
    assert torch.equal(target.backward_weight, source.backward_weight)


def test_layer_remembers_input_and_output_detached():
    for layer in make_layers("sa"):
        assert layer.last_input is None and layer.last_output is None
        x = torch.randn(2, 6, dtype=F64) if isinstance(layer, AlignedLinear) else torch.randn(2, 3, 5, 5, dtype=F64)
        x.requires_grad_()
        y = layer(x)
        assert layer.last_input is not None and not layer.last_input.requires_grad
        assert torch.equal(layer.last_input, x) and torch.equal(layer.last_output, y)
        assert not layer.last_output.requires_grad
        torch.testing.assert_close(layer.project(x, layer.weight, layer.bias), y, rtol=0, atol=0)


@pytest.mark.filterwarnings(EVEN_SAME)
@pytest.mark.parametrize(
    "args",
    [
        dict(kernel_size=3, padding=1),
        dict(kernel_size=4, padding="same"),
        dict(kernel_size=(2, 3), padding="same", dilation=(1, 2)),
        dict(kernel_size=3, stride=2, padding=1),
        dict(kernel_size=3, stride=(2, 3), padding="valid"),
        dict(kernel_size=3, padding=1, groups=3, out_channels=6),
    ],
)
def test_conv_reconstruct_is_the_adjoint_of_project(args):
    torch.manual_seed(3)
    args = {"in_channels": 3, "out_channels": 4, **args}
    layer = AlignedConv2d(**args, rule=get_rule("ia"), dtype=F64)
    x = torch.randn(2, 3, 8, 7, dtype=F64)
    K = layer.backward_weight
    y = torch.randn_like(layer.project(x, K))
    r = layer.reconstruct(y, K, like=x)
    assert r.shape == x.shape
    # <project(x, K), y> == <x, reconstruct(y, K)> for every x: reconstruct is project's adjoint
    torch.testing.assert_close((layer.project(x, K) * y).sum(), (x * r).sum(), rtol=1e-12, atol=1e-12)


def test_linear_reconstruct_is_y_kernel():
    lin, _ = make_layers("ia")
    y = torch.randn(3, 5, dtype=F64)
    torch.testing.assert_close(lin.reconstruct(y, lin.weight, like=None), y @ lin.weight, rtol=0, atol=0)


def test_angle_scale_buffer_follows_the_rule_and_the_module():
    lin, _ = make_layers("kp", weights={"angle": 0.25})
    assert lin.angle_scale.shape == () and lin.angle_scale.item() == 0.25
    assert dict(lin.named_buffers())["angle_scale"] is lin.angle_scale
    assert make_layers("sa")[0].angle_scale.item() == 0.0
    assert lin.float().angle_scale.dtype == torch.float32
    assert lin.epoch == 0.0 and lin.rule.name == "kp" and isinstance(lin, AlignedLayer)


def test_transport_scale_is_none_exactly_at_a_unit_angle_scale():
    lin, _ = make_layers("kp")
    assert lin.angle_scale.item() == 1.0 and lin.transport_scale is None  # dB = dW, no multiply
    buffer = lin.angle_scale
    lin.set_angle_scale(0.5)
    assert lin.transport_scale is buffer and buffer.item() == 0.5  # in place: the same tensor
    lin.set_angle_scale(1.0)
    assert lin.transport_scale is None and buffer.item() == 1.0
    assert make_layers("kp", weights={"angle": 0.25})[0].transport_scale is not None


def test_from_module_keeps_arguments_dtype_and_output():
    torch.manual_seed(4)
    native = nn.Conv2d(
        4,
        6,
        (3, 2),
        stride=(2, 1),
        padding="valid",
        dilation=(1, 2),
        groups=2,
        bias=False,
        padding_mode="reflect",
        dtype=F64,
    ).eval()
    layer = AlignedConv2d.from_module(native, get_rule("kp"))
    for attr in (
        "in_channels",
        "out_channels",
        "kernel_size",
        "stride",
        "padding",
        "dilation",
        "groups",
        "padding_mode",
    ):
        assert getattr(layer, attr) == getattr(native, attr)
    assert layer.bias is None and layer.weight.dtype == F64 and layer.backward_weight.dtype == F64
    assert not layer.training
    x = torch.randn(1, 4, 9, 9, dtype=F64)
    assert torch.equal(layer(x), native(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_layers_run_in_low_precision(dtype):
    for layer in make_layers("kp"):
        layer.to(dtype)
        x = torch.randn(2, 6) if isinstance(layer, AlignedLinear) else torch.randn(2, 3, 5, 5)
        y = layer(x.to(dtype))
        y.float().square().sum().backward()
        assert y.dtype == dtype and layer.backward_weight.grad.dtype == dtype
        torch.testing.assert_close(layer.backward_weight.grad, layer.weight.grad, rtol=0, atol=0)


def test_torch_compile_of_aligned_layers_gives_eager_gradients():
    torch.manual_seed(5)
    rule = get_rule("kp")
    net = nn.Sequential(
        AlignedConv2d(2, 4, 3, stride=2, padding=1, rule=rule),
        nn.ReLU(),
        nn.Flatten(),
        AlignedLinear(4 * 16, 3, rule=get_rule("fa")),
    )
    x = torch.randn(2, 2, 8, 8)

    def grads(model):
        net.zero_grad(set_to_none=True)
        model(x).square().sum().backward()
        return {n: p.grad for n, p in net.named_parameters()}

    eager = grads(net)
    compiled = grads(torch.compile(net, backend="aot_eager", fullgraph=True))
    assert eager.keys() == compiled.keys()
    for name, ref in eager.items():
        torch.testing.assert_close(compiled[name], ref, msg=name)
    torch.testing.assert_close(net[0].last_input, x)


def test_from_module_gives_B_the_scale_of_W():
    torch.manual_seed(6)
    native = nn.Conv2d(8, 16, 3, dtype=F64)
    with torch.no_grad():
        native.weight.mul_(10.0)  # another initialiser's scale, e.g. He normal with fan-out
    layer = AlignedConv2d.from_module(native, get_rule("fa"))
    W, B = layer.weight.detach(), layer.backward_weight.detach()
    torch.testing.assert_close(B.norm(), W.norm(), rtol=1e-12, atol=0)
    assert (W * B).sum().abs() < 0.2 * W.norm() * B.norm()  # still an independent direction
    zero = nn.Linear(4, 3, dtype=F64)
    nn.init.zeros_(zero.weight)
    assert AlignedLinear.from_module(zero, get_rule("fa")).backward_weight.norm() > 0  # zero W: B keeps its init
