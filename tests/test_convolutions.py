"""Every torch convolution aligned (Conv1d/2d/3d, ConvTranspose1d/2d/3d), float64, over random
configurations of every argument, against the native torch layer: the forward is the layer's;
with B == W every gradient is backprop's; with a random B the input gradient is the
vector-Jacobian product of the native op with B in W's place, dW and db ignore B, and
Kolen-Pollack's delivered dB equals angle_scale * dW. Also unbatched inputs, output_size,
the contract's project/reconstruct and torch state dicts."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from neural_alignment import get_rule
from neural_alignment.core.layers import CONVOLUTIONS

F64 = torch.float64
EVEN_SAME = "ignore:Using padding='same' with even kernel"  # torch's own note: it pads a copy, as we do
KINDS = list(CONVOLUTIONS)


def ints(draw, n, low, high):
    return tuple(draw(st.integers(low, high)) for _ in range(n))


@st.composite
def configurations(draw):
    """(torch class, constructor arguments, input shape) covering every argument of the class."""
    kind = draw(st.sampled_from(KINDS))
    n = int(kind.__name__[-2])  # spatial dimensions: the digit in "Conv2d"
    transposed = kind.__name__.startswith("ConvTranspose")
    groups = draw(st.sampled_from([1, 2]))
    c_in, c_out = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 2))
    kernel = ints(draw, n, 1, 3)
    dilation = ints(draw, n, 1, 2)
    args = dict(
        in_channels=c_in,
        out_channels=c_out,
        kernel_size=kernel,
        dilation=dilation,
        groups=groups,
        bias=draw(st.booleans()),
    )
    if transposed:
        stride = ints(draw, n, 1, 3)
        args.update(stride=stride, padding=ints(draw, n, 0, 1))
        # torch: output_padding < max(stride, dilation) per axis
        args["output_padding"] = tuple(
            draw(st.integers(0, max(s, d) - 1)) for s, d in zip(stride, dilation, strict=True)
        )
    else:
        padding = draw(st.sampled_from(["same", "valid", 0, 1, ints(draw, n, 0, 2)]))
        args.update(
            stride=1 if padding == "same" else ints(draw, n, 1, 2),
            padding=padding,
            padding_mode=draw(st.sampled_from(["zeros", "reflect", "replicate", "circular"])),
        )
    size = {1: (9,), 2: (6, 5), 3: (5, 5, 5)}[n]  # room for a 3-tap kernel at dilation 2
    return kind, args, (draw(st.integers(1, 2)), c_in, *size)


def native_gradients(native: nn.Module, weight: torch.Tensor, x: torch.Tensor, dy: torch.Tensor):
    """(y, dx, dW[, db]) of the native layer run with ``weight`` in place of its own: autograd on torch's op."""
    x = x.detach().requires_grad_()
    W = weight.detach().clone().requires_grad_()
    params = {"weight": W}
    wrt = [x, W]
    if native.bias is not None:
        params["bias"] = native.bias.detach().clone().requires_grad_()
        wrt.append(params["bias"])
    y = torch.func.functional_call(native, params, (x,))
    return (y, *torch.autograd.grad(y, wrt, dy))


@pytest.mark.filterwarnings(EVEN_SAME)
@settings(max_examples=60, deadline=None)
@given(config=configurations(), seed=st.integers(0, 2**16))
def test_every_convolution_matches_native_and_sends_dy_back_through_B(config, seed):
    kind, args, shape = config
    torch.manual_seed(seed)
    native = kind(**args, dtype=F64)
    layer = CONVOLUTIONS[kind].from_module(native, get_rule("kp", weights={"angle": 0.5, "decay": 0.0}))
    x = torch.randn(*shape, dtype=F64, requires_grad=True)
    y = layer(x)
    assert torch.equal(y, native(x))
    dy = torch.randn_like(y)
    wrt = [x, layer.weight, layer.backward_weight] + ([layer.bias] if layer.bias is not None else [])
    dx, dW, dB, *db = torch.autograd.grad(y, wrt, dy)
    _, dx_with_B, *_ = native_gradients(native, layer.backward_weight, x, dy)
    _, dx_with_W, ref_dW, *ref_db = native_gradients(native, native.weight, x, dy)
    if not torch.allclose(layer.backward_weight, layer.weight):  # (a 1-entry B at W's norm may be W)
        assert not torch.allclose(dx, dx_with_W)  # a random B moves dx off backprop's
    torch.testing.assert_close(dx, dx_with_B, rtol=0, atol=1e-10)  # the VJP of the native op with B
    torch.testing.assert_close(dW, ref_dW, rtol=0, atol=1e-10)  # dW ignores B
    for got, ref in zip(db, ref_db, strict=True):
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(dB, 0.5 * dW, rtol=0, atol=0)  # Kolen-Pollack's delivered update
    with torch.no_grad():
        layer.backward_weight.copy_(layer.weight)
    (dx_tied,) = torch.autograd.grad(layer(x), x, dy)
    torch.testing.assert_close(dx_tied, dx_with_W, rtol=0, atol=1e-10)  # B == W: backprop


@pytest.mark.parametrize("kind", KINDS)
def test_unbatched_input_and_contract_fields(kind):
    torch.manual_seed(0)
    n = int(kind.__name__[-2])
    native = kind(2, 4, 3, stride=2, padding=1, dtype=F64)
    layer = CONVOLUTIONS[kind].from_module(native, get_rule("fa"))
    x = torch.randn(2, *[7] * n, dtype=F64)
    assert torch.equal(layer(x), native(x))
    assert layer.last_input.shape == (1, *x.shape)  # the batch axis kept
    torch.testing.assert_close(layer.project(layer.last_input, layer.weight, layer.bias), layer.last_output)
    K = layer.backward_weight
    z = torch.randn(3, 2, *[7] * n, dtype=F64)
    out = torch.randn_like(layer.project(z, K))
    r = layer.reconstruct(out, K, like=z)
    assert r.shape == z.shape
    # <project(z, K), out> == <z, reconstruct(out, K)>: reconstruct is project's adjoint
    torch.testing.assert_close((layer.project(z, K) * out).sum(), (z * r).sum(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", [nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d])
def test_transposed_output_size_is_honoured_by_forward_and_project(kind):
    torch.manual_seed(1)
    n = int(kind.__name__[-2])
    native = kind(2, 3, 3, stride=2, padding=1, dtype=F64)
    layer = CONVOLUTIONS[kind].from_module(native, get_rule("sa"))
    x = torch.randn(2, 2, *[4] * n, dtype=F64)
    size = [8] * n  # output_padding 1 on every axis
    y = layer(x, output_size=size)
    assert torch.equal(y, native(x, output_size=size)) and list(y.shape[2:]) == size
    assert torch.equal(layer.project(x, layer.weight, layer.bias), y)


@pytest.mark.parametrize("kind", KINDS)
def test_state_dicts_load_both_ways_and_bp_keeps_no_B(kind):
    native = kind(2, 2, 3, dtype=F64)
    layer = CONVOLUTIONS[kind](2, 2, 3, rule=get_rule("kp"), dtype=F64)
    B0 = layer.backward_weight.detach().clone()
    layer.load_state_dict(native.state_dict(), strict=True)
    assert torch.equal(layer.weight, native.weight) and torch.equal(layer.backward_weight, B0)
    assert kind(2, 2, 3, dtype=F64).load_state_dict(layer.state_dict(), strict=False).unexpected_keys == [
        "backward_weight"
    ]
    bp = CONVOLUTIONS[kind].from_module(native, get_rule("bp"))
    assert bp.backward_weight is None and [n for n, _ in bp.named_parameters()] == ["weight", "bias"]
