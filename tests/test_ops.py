"""The aligned ops against native autograd (B == W), independent references (B != W), the
transported KP update dB = angle_scale * dW, needs_input_grad, dtypes and torch.compile."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

from neural_alignment.core.ops import aligned_conv2d, aligned_linear

F64 = torch.float64
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def leaf(*shape, dtype=F64, device="cpu", grad=True):
    return torch.randn(*shape, dtype=dtype, device=device).requires_grad_(grad)


def scale(value, like):
    return torch.tensor(value, dtype=like.dtype, device=like.device)


@st.composite
def conv_configs(draw):
    groups = draw(st.sampled_from([1, 2, 3]))
    depthwise = draw(st.booleans())
    c_in = groups * draw(st.integers(1, 2))
    c_out = c_in if depthwise else groups * draw(st.integers(1, 3))
    return dict(
        c_in=c_in,
        c_out=c_out,
        groups=c_in if depthwise else groups,
        kernel=(draw(st.integers(1, 4)), draw(st.integers(1, 4))),
        stride=(draw(st.integers(1, 3)), draw(st.integers(1, 3))),
        padding=(draw(st.integers(0, 2)), draw(st.integers(0, 2))),
        dilation=(draw(st.integers(1, 2)), draw(st.integers(1, 2))),
        bias=draw(st.booleans()),
        batch=draw(st.integers(1, 2)),
    )


@settings(max_examples=40, deadline=None)
@given(cfg=conv_configs(), seed=st.integers(0, 2**16))
def test_conv_with_B_equal_W_is_exact_backprop(cfg, seed):
    torch.manual_seed(seed)
    kh, kw = cfg["kernel"]
    x = leaf(cfg["batch"], cfg["c_in"], 9, 8)
    W = leaf(cfg["c_out"], cfg["c_in"] // cfg["groups"], kh, kw)
    b = leaf(cfg["c_out"]) if cfg["bias"] else None
    args = (cfg["stride"], cfg["padding"], cfg["dilation"], cfg["groups"])
    y = aligned_conv2d(x, W, b, W.detach(), scale(1.0, W), *args)
    y_ref = F.conv2d(x, W, b, *args)
    assert torch.equal(y, y_ref)
    dy = torch.randn_like(y)
    wrt = [t for t in (x, W, b) if t is not None]
    for got, ref in zip(torch.autograd.grad(y, wrt, dy), torch.autograd.grad(y_ref, wrt, dy), strict=True):
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize("x_shape", [(5, 4), (2, 3, 4), (4,)])
def test_linear_with_B_equal_W_is_exact_backprop(x_shape):
    torch.manual_seed(0)
    x, W, b = leaf(*x_shape), leaf(3, 4), leaf(3)
    y = aligned_linear(x, W, b, W.detach(), scale(1.0, W))
    y_ref = F.linear(x, W, b)
    assert torch.equal(y, y_ref)
    dy = torch.randn_like(y)
    for got, ref in zip(torch.autograd.grad(y, (x, W, b), dy), torch.autograd.grad(y_ref, (x, W, b), dy), strict=True):
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-10)


def test_linear_dx_uses_B_and_dW_db_stay_ordinary():
    torch.manual_seed(1)
    x, W, b, B = leaf(2, 5, 4), leaf(3, 4), leaf(3), leaf(3, 4, grad=False)
    dy = torch.randn(2, 5, 3, dtype=F64)
    dx, dW, db = torch.autograd.grad(aligned_linear(x, W, b, B, scale(1.0, W)), (x, W, b), dy)
    torch.testing.assert_close(dx, torch.einsum("nto,oi->nti", dy, B), rtol=0, atol=1e-12)
    torch.testing.assert_close(dW, torch.einsum("nto,nti->oi", dy, x), rtol=0, atol=1e-12)
    torch.testing.assert_close(db, dy.sum((0, 1)), rtol=0, atol=1e-12)
    assert B.grad is None


@pytest.mark.parametrize("stride, padding, dilation, groups", [(1, 1, 1, 1), (2, (1, 0), (1, 2), 2), (3, 2, 2, 4)])
def test_conv_dx_is_transposed_conv_with_B(stride, padding, dilation, groups):
    torch.manual_seed(2)
    x = leaf(2, 4, 10, 9)
    c_out = 4 if groups == 4 else 6
    W, B = leaf(c_out, 4 // groups, 3, 2), leaf(c_out, 4 // groups, 3, 2, grad=False)
    b = leaf(W.shape[0])
    y = aligned_conv2d(x, W, b, B, scale(1.0, W), stride, padding, dilation, groups)
    dy = torch.randn_like(y)
    dx, dW, db = torch.autograd.grad(y, (x, W, b), dy)
    # independent references: dx by the transposed conv with B, output size x's
    probe = F.conv_transpose2d(dy, B, None, stride, padding, 0, groups, dilation)
    extra = [x.shape[i] - probe.shape[i] for i in (2, 3)]
    ref_dx = F.conv_transpose2d(dy, B, None, stride, padding, extra, groups, dilation)
    torch.testing.assert_close(dx, ref_dx, rtol=0, atol=1e-12)
    ref_dW, ref_db = torch.autograd.grad(F.conv2d(x, W, b, stride, padding, dilation, groups), (W, b), dy)
    torch.testing.assert_close(dW, ref_dW, rtol=0, atol=1e-12)
    torch.testing.assert_close(db, ref_db, rtol=0, atol=1e-12)


def conv_case():
    torch.manual_seed(3)
    return leaf(2, 2, 6, 6), leaf(4, 2, 3, 3), leaf(4)


def linear_case():
    torch.manual_seed(3)
    return leaf(5, 3), leaf(4, 3), leaf(4)


def apply(op, x, W, b, B, s):
    return aligned_linear(x, W, b, B, s) if op == "linear" else aligned_conv2d(x, W, b, B, s, 1, 1, 1, 1)


def through_the_function(op, *args):
    """``op(*args)`` forced onto the autograd Function (a caller's saved-tensor hooks turn the
    native path off), the hooks doing nothing."""
    with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
        return op(*args)


@pytest.mark.parametrize("path", ["native", "function"])
@pytest.mark.parametrize("op, case", [("linear", linear_case), ("conv", conv_case)])
def test_B_gets_angle_scale_times_dW_only_when_it_requires_grad(op, case, path):
    x, W, b = case()
    B = torch.randn_like(W).requires_grad_()
    run = apply if path == "native" else (lambda *args: through_the_function(apply, *args))
    run(op, x, W, b, B, scale(0.25, W)).pow(2).sum().backward()
    torch.testing.assert_close(B.grad, 0.25 * W.grad, rtol=0, atol=0)
    B.grad = None
    run(op, x, W, b, B.detach(), scale(0.25, W)).pow(2).sum().backward()
    assert B.grad is None


@pytest.mark.parametrize("op, case", [("linear", linear_case), ("conv", conv_case)])
def test_unit_angle_scale_hands_dW_itself_to_B_without_a_multiply(op, case):
    """angle_scale=None is a scale of exactly 1: dB equals dW (no multiply runs in the backward),
    and an L2 term on W in the same graph reaches W.grad only, not B.grad through a shared tensor."""
    x, W, b = case()
    B = torch.randn_like(W).requires_grad_()
    W_ref, B_ref = W.detach().clone().requires_grad_(), B.detach().clone().requires_grad_()
    task = apply(op, x, W, b, B, None).pow(2).sum()
    task_ref = apply(op, x, W_ref, b, B_ref, scale(1.0, W)).pow(2).sum()
    with AtenLog() as log:
        (task + 0.3 * W.pow(2).sum()).backward()
    (task_ref + 0.3 * W_ref.pow(2).sum()).backward()
    torch.testing.assert_close(B.grad, B_ref.grad, rtol=0, atol=0)
    torch.testing.assert_close(W.grad, W_ref.grad, rtol=0, atol=0)
    torch.testing.assert_close(W.grad - B.grad, 0.6 * W.detach())  # dW + 0.6 W beside dB = dW
    assert B.grad.data_ptr() != W.grad.data_ptr()
    scalings = [args for func, args in log.calls if func is torch.ops.aten.mul.Tensor and args[0].shape == W.shape]
    assert len(scalings) == 1  # the L2 term's 2 W dy; no dW * angle_scale


@pytest.mark.parametrize("op, case", [("linear", linear_case), ("conv", conv_case)])
def test_frozen_W_still_delivers_dB(op, case):
    x, W, b = case()
    W.requires_grad_(False)
    B = torch.randn_like(W).requires_grad_()
    y = apply(op, x, W, b, B, scale(1.0, W))
    dy = torch.randn_like(y)
    (dB,) = torch.autograd.grad(y, (B,), dy)
    W_live = W.clone().requires_grad_()
    y_ref = F.linear(x, W_live, b) if op == "linear" else F.conv2d(x, W_live, b, 1, 1)
    (dW,) = torch.autograd.grad(y_ref, (W_live,), dy)
    torch.testing.assert_close(dB, dW, rtol=0, atol=0)


class AtenLog(TorchDispatchMode):
    """Records the aten ops run while active (a real dispatcher mode, no mock)."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls.append((func, args))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize(
    "x_grad, W_grad, B_grad, mask",
    [
        (True, True, False, [True, True, True]),
        (False, True, False, [False, True, True]),
        (True, False, False, [True, False, True]),
        (False, False, True, [False, True, True]),
    ],
)
def test_conv_backward_is_one_convolution_backward_with_only_the_needed_outputs(x_grad, W_grad, B_grad, mask):
    x, W, b = conv_case()
    x.requires_grad_(x_grad)
    W.requires_grad_(W_grad)
    B = torch.randn_like(W).requires_grad_(B_grad)
    y = aligned_conv2d(x, W, b, B, scale(1.0, W), 1, 1, 1, 1)
    with AtenLog() as log:
        y.sum().backward()
    conv_calls = [args for func, args in log.calls if func is torch.ops.aten.convolution_backward.default]
    assert len(conv_calls) == 1
    assert list(conv_calls[0][-1]) == mask
    assert conv_calls[0][2] is B or torch.equal(conv_calls[0][2], B)  # B in the weight slot
    assert not any(func is torch.ops.aten.convolution.default for func, _ in log.calls)


def test_linear_backward_computes_only_what_is_needed():
    x, W, b = linear_case()
    x.requires_grad_(False)
    with AtenLog() as log:
        aligned_linear(x, W, b, W.detach(), scale(1.0, W)).sum().backward()
    matmuls = [func for func, _ in log.calls if func in (torch.ops.aten.mm.default, torch.ops.aten.matmul.default)]
    assert len(matmuls) == 1  # dW only; no dx for an input that needs none


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("op, case", [("linear", linear_case), ("conv", conv_case)])
def test_low_precision_matches_native(op, case, dtype, tol, device):
    x, W, b = (t.detach().to(device, dtype).requires_grad_() for t in case())
    y = apply(op, x, W, b, W.detach(), scale(1.0, W))
    y_ref = F.linear(x, W, b) if op == "linear" else F.conv2d(x, W, b, 1, 1)
    assert y.dtype == dtype and torch.equal(y, y_ref)
    dy = torch.randn_like(y)
    for got, ref in zip(torch.autograd.grad(y, (x, W, b), dy), torch.autograd.grad(y_ref, (x, W, b), dy), strict=True):
        assert got.dtype == dtype
        torch.testing.assert_close(got, ref, rtol=tol, atol=tol)


@pytest.mark.parametrize("op, case", [("linear", linear_case), ("conv", conv_case)])
def test_autocast_casts_like_native_and_returns_float32_gradients(op, case):
    x, W, b = (t.detach().float().requires_grad_() for t in case())
    B = W.detach().clone().requires_grad_()  # tied, attached: dB = dW
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = apply(op, x, W, b, B, scale(1.0, W))
        y_ref = F.linear(x, W, b) if op == "linear" else F.conv2d(x, W, b, 1, 1)
    assert y.dtype == torch.bfloat16 and torch.equal(y, y_ref)
    dy = torch.randn_like(y)
    got = torch.autograd.grad(y, (x, W, b, B), dy)
    ref = torch.autograd.grad(y_ref, (x, W, b), dy)
    for g, r in zip(got[:3], ref, strict=True):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, r, rtol=0, atol=0)
    torch.testing.assert_close(got[3], got[1], rtol=0, atol=0)


@pytest.mark.parametrize("op, case", [("linear", linear_case), ("conv", conv_case)])
def test_autocast_leaves_float64_alone_like_native(op, case):
    x, W, b = case()  # float64: autocast does not cast it
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = apply(op, x, W, b, W.detach(), scale(1.0, W))
        y_ref = F.linear(x, W, b) if op == "linear" else F.conv2d(x, W, b, 1, 1)
    assert y.dtype == y_ref.dtype == F64 and torch.equal(y, y_ref)


class OpsNet(torch.nn.Module):
    """conv -> relu -> linear built on the ops, B attached (KP) on the conv, detached on the linear."""

    def __init__(self):
        super().__init__()
        self.W1, self.B1 = torch.nn.Parameter(torch.randn(4, 2, 3, 3)), torch.nn.Parameter(torch.randn(4, 2, 3, 3))
        self.W2, self.B2 = torch.nn.Parameter(torch.randn(3, 4 * 16)), torch.nn.Parameter(torch.randn(3, 4 * 16))
        self.register_buffer("s", torch.tensor(0.5))

    def forward(self, x):
        h = torch.relu(aligned_conv2d(x, self.W1, None, self.B1, self.s, 2, 1, 1, 1))
        return aligned_linear(h.flatten(1), self.W2, None, self.B2.detach(), self.s)


def test_torch_compile_gives_eager_gradients():
    torch.manual_seed(4)
    net = OpsNet()
    x = torch.randn(2, 2, 8, 8)

    def grads(model):
        net.zero_grad(set_to_none=True)
        model(x).square().sum().backward()
        return [p.grad for p in net.parameters()]

    eager = grads(net)
    compiled = grads(torch.compile(net, backend="aot_eager", fullgraph=True))
    assert compiled[3] is None and eager[3] is None  # B2 detached: no task gradient
    for got, ref in zip(compiled[:3], eager[:3], strict=True):
        torch.testing.assert_close(got, ref)


# Two ways to one set of gradients: with B detached and no input_gradient the op is torch's own
# F.linear/convolution with B saved in W's place; everywhere else the autograd Function.


def grad_fn_name(y) -> str:
    return type(y.grad_fn).__name__


LINEAR_INPUTS = [((5, 4), True), ((2, 5, 4), False), ((4,), True)]


@pytest.mark.parametrize("B_grad", [False, True])
@pytest.mark.parametrize("x_shape, bias", LINEAR_INPUTS)
def test_linear_is_torchs_own_node_and_equals_the_function(x_shape, bias, B_grad):
    """B detached (every rule but kp's) or taking a gradient through ``TransportedKernel`` (kp's)."""
    torch.manual_seed(6)
    x, W, B = leaf(*x_shape), leaf(3, 4), leaf(3, 4, grad=B_grad)
    b = leaf(3) if bias else None
    y = aligned_linear(x, W, b, B, scale(0.5, W))
    assert grad_fn_name(y) != "AlignedLinearFunctionBackward"
    y_ref = through_the_function(aligned_linear, x, W, b, B, scale(0.5, W))
    assert grad_fn_name(y_ref) == "AlignedLinearFunctionBackward"
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0)
    inputs = (x, W) + ((b,) if bias else ()) + ((B,) if B_grad else ())
    dy = torch.randn_like(y)
    for got, ref in zip(torch.autograd.grad(y, inputs, dy), torch.autograd.grad(y_ref, inputs, dy), strict=True):
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-12)
    dx = torch.autograd.grad(aligned_linear(x, W, b, B, scale(0.5, W)), x, dy)[0]
    torch.testing.assert_close(dx, dy @ B.detach(), rtol=0, atol=1e-12)  # B's, never W's


@pytest.mark.parametrize("B_grad", [False, True])
def test_linear_on_views_of_one_weight_saves_the_same_views_of_B(B_grad):
    """An attention's q, k, v projections: W and B are thirds of one tensor each."""
    torch.manual_seed(7)
    W_all, B_all = leaf(9, 4), leaf(9, 4, grad=B_grad)
    x = leaf(2, 5, 4)
    dy = torch.randn(2, 5, 3, dtype=F64)
    for third, (W, B) in enumerate(zip(W_all.chunk(3), B_all.chunk(3), strict=True)):
        y = aligned_linear(x, W, None, B, None)
        assert grad_fn_name(y) != "AlignedLinearFunctionBackward"
        dx, dW_all, *dB_all = torch.autograd.grad(y, (x, W_all) + ((B_all,) if B_grad else ()), dy)
        torch.testing.assert_close(dx, dy @ B.detach(), rtol=0, atol=1e-12)
        ref_dW = torch.zeros_like(W_all)
        ref_dW[3 * third : 3 * third + 3] = torch.einsum("nto,nti->oi", dy, x)
        torch.testing.assert_close(dW_all, ref_dW, rtol=0, atol=1e-12)
        for dB in dB_all:  # kp at a unit scale: B's third gets dW's
            torch.testing.assert_close(dB, ref_dW, rtol=0, atol=1e-12)


@pytest.mark.parametrize("B_grad", [False, True])
@pytest.mark.parametrize("x_grad", [True, False])
def test_conv_is_torchs_own_node_and_equals_the_function(x_grad, B_grad):
    """B detached (every rule but kp's) or taking a gradient through ``TransportedKernel`` (kp's)."""
    x, W, b = conv_case()
    x.requires_grad_(x_grad)
    B = torch.randn_like(W).detach().requires_grad_(B_grad)
    y = aligned_conv2d(x, W, b, B, scale(0.5, W), 2, 1, 1, 1)
    assert grad_fn_name(y) == "ConvolutionBackward0"
    y_ref = through_the_function(aligned_conv2d, x, W, b, B, scale(0.5, W), 2, 1, 1, 1)
    assert grad_fn_name(y_ref) == "AlignedConvFunctionBackward"
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0)
    inputs = ((x,) if x_grad else ()) + (W, b) + ((B,) if B_grad else ())
    dy = torch.randn_like(y)
    for got, ref in zip(torch.autograd.grad(y, inputs, dy), torch.autograd.grad(y_ref, inputs, dy), strict=True):
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("op, case", [("linear", linear_case), ("conv", conv_case)])
def test_a_callers_saved_tensor_hooks_still_see_every_saved_tensor_and_dx_stays_Bs(op, case):
    """save_on_cpu, checkpointing and offloading hooks keep working on the aligned ops."""
    x, W, b = case()
    B = torch.randn_like(W).detach()
    packed = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: packed.append(t) or t, lambda t: t):
        y = apply(op, x, W, b, B, scale(1.0, W))
    assert any(t is x for t in packed)
    dy = torch.randn_like(y)
    dx = torch.autograd.grad(y, x, dy)[0]
    ref = dy @ B if op == "linear" else torch.autograd.grad(F.conv2d(x, B, None, 1, 1), x, dy)[0]
    torch.testing.assert_close(dx, ref, rtol=0, atol=1e-12)


def test_checkpointed_aligned_layers_give_the_same_gradients():
    torch.manual_seed(8)
    x, W, B = leaf(6, 4), leaf(5, 4), leaf(5, 4, grad=False)

    def block(inp):
        return torch.tanh(aligned_linear(inp, W, None, B, scale(1.0, W)))

    dy = torch.randn(6, 5, dtype=F64)
    plain = torch.autograd.grad(block(x), (x, W), dy)
    checkpointed = torch.autograd.grad(torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False), (x, W), dy)
    for got, ref in zip(checkpointed, plain, strict=True):
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("op, case", [("linear", linear_case), ("conv", conv_case)])
def test_without_grad_the_op_is_torchs_forward(op, case):
    x, W, b = case()
    B = torch.randn_like(W).detach()
    with torch.no_grad():
        y = apply(op, x, W, b, B, scale(1.0, W))
    assert y.grad_fn is None
    ref = F.linear(x, W, b) if op == "linear" else F.conv2d(x, W, b, 1, 1)
    torch.testing.assert_close(y, ref.detach(), rtol=0, atol=0)
