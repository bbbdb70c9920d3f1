"""The aligned ops: forward with the forward kernel W, backward with the backward kernel B.

Linear (x: [..., in], W and B: [out, in], b: [out])::

    y  = x W^T + b                  (exactly F.linear)
    dx = dy B                       (B stands where W stood: B == W is backprop)
    dW = dy^T x,   db = sum dy      (the ordinary gradients, leading axes summed)
    dB = angle_scale * dW           (only when B requires grad, else None; angle_scale None: dB = dW)

Convolutions, 1-, 2- or 3-d, ordinary or transposed (one op, ``aligned_conv``; W and B:
[out, in/groups, *k] or, transposed, [in, out/groups, *k])::

    y  = conv(x, W) + b             (exactly F.conv{n}d / F.conv_transpose{n}d)
    dx = conv(., B)^T dy            (the op's vector-Jacobian product with B in W's slot:
                                     conv_transpose(dy, B) for a conv, conv(dy, B) for a transposed one)
    dW, db                          (the ordinary gradients)
    dB = angle_scale * dW           (only when B requires grad, else None; angle_scale None: dB = dW)

dx, dW and db of a convolution come from ONE ``aten.convolution_backward`` call with B in the
weight slot. ``dB = angle_scale * dW`` is Kolen-Pollack's transported update: the gradient of
``angle_scale * sum(B * G)`` with respect to B, G being dW, delivered in the task backward so
one backward pass serves a whole step. A scale of exactly 1 is passed as ``angle_scale=None``:
dB is then dW itself, the same tensor, with no multiply. Autograd never accumulates in place into
a tensor that two gradients hold, so W.grad and B.grad stay separate: where W's gradient has a
second term in the graph it is added out of place and B keeps dW, a pass saved (ResNet-18's kp
step with its model L2 in the graph, 0.971 (0.957-0.983) of the multiplying one's on the
development machine); with none (the trainer adds the model L2 after the backward), autograd
copies dW for one of them, the multiply's cost (the demo convnet's kp step 0.9996
(0.987-1.012)). A layer passes B detached unless its rule uses the
``angle`` primitive, so B normally gets no gradient from the task loss; the trainer passes
kp's B detached too and gives it ``angle_scale * W.grad`` after the backward
(``core.alignment.deliver_angle_after_backward``): the same update, with neither the copy nor a node.

``input_gradient`` (optional, both ops): a callable ``(dy, input_shape) -> dx | None`` that the
backward calls for dx in place of ``dy B`` (None keeps ``dy B``); dW, db and dB are unchanged.
A rule's feedback path (``core/feedback.py``) reaches the op through it.

Under autocast the ops cast their inputs to the autocast dtype as F.linear/F.conv{n}d do.
Nothing here reads a tensor on the host, so the ops trace under ``torch.compile`` and XLA.
Gradients nobody asked for (``ctx.needs_input_grad``) are not computed.

Two ways to the same gradients. Where no ``input_gradient`` is given, the op is torch's own
F.linear / convolution with B saved for the backward in W's place (``_native_with_B_saved``, a
saved-tensor hook): torch's backward node then computes dx with B, and dW and db from x and dy,
which do not read W. Where B takes a gradient (the ``angle`` primitive's), the kernel reaches
torch's op through ``TransportedKernel``, a node that forwards W unchanged (a view) and hands the
dW coming back to W and ``angle_scale * dW`` (dW itself for None) to B: no product runs in it.
That skips a Python autograd Function around the product, which measured 2-3% of a small
decoder's step (ConvTranspose2d, 43 ms) and 1.3% (0.998-1.025, 316 pairs) of ResNet-18's trainer
step on the development machine. Everywhere else (an ``input_gradient``, autocast,
``torch.compile`` tracing, saved-tensor hooks of the caller's own such as ``save_on_cpu`` or
checkpointing, or torch saving something other than W or a view of it for dx) the ops run
``Aligned{Linear,Conv}Function``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "ConvArgs",
    "InputGradient",
    "aligned_conv",
    "aligned_conv2d",
    "aligned_convolution",
    "aligned_linear",
    "conv_arguments",
]

InputGradient = Callable[[Tensor, tuple], "Tensor | None"]
"""``(dy, input_shape) -> dx | None``: an op's replacement for its input gradient dy B."""


def _transported(dW: Tensor | None, angle_scale: Tensor | None, needed: bool) -> Tensor | None:
    """dB = angle_scale * dW (dW itself when ``angle_scale`` is None) when B asked for a gradient, else None."""
    if not needed:
        return None
    assert dW is not None, "dW is computed whenever B asks for a gradient"
    return dW if angle_scale is None else dW * angle_scale


def _replaced_input_gradient(ctx, dy: Tensor) -> Tensor | None:
    """``input_gradient(dy, input_shape)`` when the op was given one and dx is needed, else None."""
    if ctx.input_gradient is None or not ctx.needs_input_grad[0]:
        return None
    return ctx.input_gradient(dy, ctx.input_shape)


def linear_kernel_gradient(x: Tensor, dy: Tensor) -> Tensor:
    """dW of y = x W^T: dy^T x with every axis but the last flattened into the batch (one product)."""
    return dy.reshape(-1, dy.shape[-1]).t().mm(x.reshape(-1, x.shape[-1]))


def conv_kernel_gradient(x: Tensor, dy: Tensor, W: Tensor, conv_args: ConvArgs) -> Tensor:
    """dW of y = torch.convolution(x, W, None, *conv_args): the kernel product alone (no forward)."""
    return torch.ops.aten.convolution_backward.default(dy, x, W, None, *conv_args, [False, True, False])[1]


class AlignedLinearFunction(torch.autograd.Function):
    """y = F.linear(x, W, b); dx = dy B (or input_gradient's); dW = dy^T x; db = sum dy; dB = angle_scale * dW
    (the context set in ``forward``: see ``AlignedConvFunction``)."""

    @staticmethod
    def forward(
        ctx, x: Tensor, W: Tensor, b: Tensor | None, B: Tensor, angle_scale: Tensor | None, input_gradient
    ) -> Tensor:
        need_x, need_W, _, need_B, _, _ = ctx.needs_input_grad
        ctx.input_gradient, ctx.input_shape = input_gradient, tuple(x.shape)
        ctx.save_for_backward(
            x if (need_W or need_B) else None,
            B if need_x else None,
            angle_scale if need_B else None,
        )
        return F.linear(x, W, b)

    @staticmethod
    def backward(ctx, dy: Tensor):
        x, B, angle_scale = ctx.saved_tensors
        need_x, need_W, need_b, need_B, _, _ = ctx.needs_input_grad
        dW = db = None
        dx = _replaced_input_gradient(ctx, dy)
        if need_x and dx is None:
            dx = dy.matmul(B)
        if need_W or need_B:
            dW = linear_kernel_gradient(x, dy)
        if need_b:
            db = dy.reshape(-1, dy.shape[-1]).sum(0)
        dB = _transported(dW, angle_scale, need_B)
        return dx, dW if need_W else None, db, dB, None, None


class AlignedConvFunction(torch.autograd.Function):
    """y = torch.convolution(x, W, b, *conv_args) (a convolution or a transposed one, any number of
    spatial dimensions; ``conv_args = (stride, padding, dilation, transposed, output_padding, groups)``);
    dx with B in W's slot (or input_gradient's); dW, db ordinary; dB = angle_scale * dW.

    The context is set in ``forward(ctx, ...)``, not in a ``setup_context``: with one,
    ``Function.apply`` binds the arguments to ``forward``'s signature through ``inspect`` on every
    call, tens of microseconds per layer and step."""

    @staticmethod
    def forward(ctx, x, W, b, B, angle_scale, input_gradient, conv_args) -> Tensor:
        ctx.input_gradient, ctx.input_shape = input_gradient, tuple(x.shape)
        ctx.conv_args = conv_args
        ctx.bias_sizes = None if b is None else list(b.shape)
        # convolution_backward reads x and B for their shapes even when it computes
        # neither gradient; both are alive anyway (x feeds this op, B is a parameter).
        ctx.save_for_backward(x, B, angle_scale if ctx.needs_input_grad[3] else None)
        return torch.convolution(x, W, b, *conv_args)

    @staticmethod
    def backward(ctx, dy: Tensor):
        x, B, angle_scale = ctx.saved_tensors
        need_x, need_W, need_b, need_B = ctx.needs_input_grad[:4]
        replaced = _replaced_input_gradient(ctx, dy)
        dx, dW, db = torch.ops.aten.convolution_backward.default(
            dy,
            x,
            B,
            ctx.bias_sizes,
            *ctx.conv_args,
            [need_x and replaced is None, need_W or need_B, need_b],
        )
        dB = _transported(dW, angle_scale, need_B)
        dx = replaced if replaced is not None else (dx if need_x else None)
        return dx, dW if need_W else None, db if need_b else None, dB, None, None, None


def _unpacked(t: Tensor) -> Tensor:
    return t


def _permuted_view(t: Tensor, W: Tensor) -> bool:
    """Whether ``t`` holds exactly W's elements in W's memory, its axes permuted (F.linear saves
    W^T, a view; W may itself be a view, an attention's third of its in_proj_weight). False on
    a device whose tensors have no storage (XLA), where only W itself is recognised."""
    if t._base is None or t.numel() != W.numel() or sorted(t.stride()) != sorted(W.stride()):
        return False
    try:
        same_memory = t.untyped_storage().data_ptr() == W.untyped_storage().data_ptr()
        return same_memory and t.storage_offset() == W.storage_offset()
    except (RuntimeError, NotImplementedError):
        return False


def _callers_saved_tensor_hooks() -> bool:
    """Whether saved-tensor hooks of the caller's are active (offloading, checkpointing), or
    this torch cannot tell: an inner hook would hide the saved tensors from them."""
    top = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", None)
    return top is None or top(False) is not None


class TransportedKernel(torch.autograd.Function):
    """Forward: W itself (a view), to be fed to a native op as its kernel. Backward: the dW that op
    computes goes to W, and ``angle_scale * dW`` (dW itself for ``angle_scale`` None) to B:
    Kolen-Pollack's transported update, with no product of its own."""

    @staticmethod
    def forward(ctx, W: Tensor, B: Tensor, angle_scale: Tensor | None) -> Tensor:
        ctx.save_for_backward(angle_scale)
        return W.view_as(W)

    @staticmethod
    def backward(ctx, dW: Tensor):
        (angle_scale,) = ctx.saved_tensors
        need_W, need_B, _ = ctx.needs_input_grad
        return dW if need_W else None, _transported(dW, angle_scale, need_B), None


def _native_with_B_saved(
    native: Callable[[Tensor, Tensor, Tensor | None], Tensor],
    x: Tensor,
    W: Tensor,
    b: Tensor | None,
    B: Tensor,
    angle_scale: Tensor | None,
) -> Tensor | None:
    """``native(x, W, b)`` (torch's own op) with every W it saves for its backward (or permuted
    view of W: F.linear saves W^T) replaced by B (the same view of B): the native backward then
    gives dx with B, and dW, db as ever (they never read W). Where B requires grad, W goes in
    through ``TransportedKernel``, which gives B ``angle_scale`` times the dW coming back. None
    when that cannot be relied on: the caller then runs the autograd Function. Used only where
    dx is B's (no ``input_gradient``)."""
    if not torch.is_grad_enabled():
        return native(x, W, b)  # no graph: nothing is saved
    if (
        torch.compiler.is_compiling()
        or torch.is_autocast_enabled(x.device.type)
        or _callers_saved_tensor_hooks()
        or B.shape != W.shape
        or B.stride() != W.stride()
        or B.dtype != W.dtype
    ):
        return None
    if B.requires_grad:
        W, B = TransportedKernel.apply(W, B, angle_scale), B.detach()
    swapped = 0

    def pack(t: Tensor) -> Tensor:
        nonlocal swapped
        if t is W:
            swapped += 1
            return B
        if _permuted_view(t, W):
            swapped += 1
            return B.as_strided(t.shape, t.stride(), B.storage_offset())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, _unpacked):
        y = native(x, W, b)
    # dx reads W only through what the op saved: when x needs no gradient B is never read;
    # when it does, exactly one saved W must have become B
    if x.requires_grad and swapped != 1:
        return None
    return y


def _apply(function, native, x, W, b, B, angle_scale, input_gradient, *conv_args) -> Tensor:
    """``native(x, W, b)`` with B saved in W's place where no ``input_gradient`` is given and that
    path holds (``_native_with_B_saved``), else
    ``function.apply(...)``; under autocast for x's device, on inputs cast to the autocast
    dtype (as autocast casts F.linear/F.conv2d inputs: floating point ones other than float64;
    the casts are differentiable, so gradients return in the parameters' dtype) with autocast
    off inside, so the backward's products see the dtypes the forward saw."""
    if input_gradient is None:
        y = _native_with_B_saved(native, x, W, b, B, angle_scale)
        if y is not None:
            return y
    device_type = x.device.type
    if not torch.is_autocast_enabled(device_type):
        return function.apply(x, W, b, B, angle_scale, input_gradient, *conv_args)
    x, W, b, B = autocast_operands(x, W, b, B)
    with torch.autocast(device_type, enabled=False):
        return function.apply(x, W, b, B, angle_scale, input_gradient, *conv_args)


def autocast_operands(*tensors: Tensor | None) -> tuple:
    """``tensors`` as autocast gives them to F.linear/F.conv2d when it is on for the first one's
    device: floating point ones other than float64 cast to the autocast dtype (None stays None)."""
    device_type = next(t for t in tensors if t is not None).device.type
    if not torch.is_autocast_enabled(device_type):
        return tensors
    dtype = torch.get_autocast_dtype(device_type)
    return tuple(t.to(dtype) if t is not None and _autocast_eligible(t) else t for t in tensors)


def _autocast_eligible(t: Tensor) -> bool:
    """Whether autocast casts ``t`` for F.linear/F.conv2d: floating point, not float64."""
    return t.is_floating_point() and t.dtype != torch.float64


def _tuple(value, n: int) -> list[int]:
    """An int or an n-sequence as a list of n ints (the form aten ops take)."""
    if isinstance(value, int):
        return [value] * n
    values = [int(v) for v in value]
    if len(values) != n:
        raise ValueError(f"expected {n} values, got {values}")
    return values


def aligned_linear(
    x: Tensor,
    W: Tensor,
    b: Tensor | None,
    B: Tensor,
    angle_scale: Tensor | None,
    input_gradient: InputGradient | None = None,
) -> Tensor:
    """``F.linear(x, W, b)`` whose backward uses B for dx (see the module docstring).

    ``angle_scale`` is a 0-dim tensor: dB = angle_scale * dW when B requires grad (None: dB = dW).
    ``input_gradient(dy, input_shape)``, when given, supplies dx in place of dy B (None keeps dy B).
    """
    return _apply(AlignedLinearFunction, F.linear, x, W, b, B, angle_scale, input_gradient)


def aligned_conv(
    x: Tensor,
    W: Tensor,
    b: Tensor | None,
    B: Tensor,
    angle_scale: Tensor | None,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
    input_gradient: InputGradient | None = None,
    transposed: bool = False,
    output_padding=0,
) -> Tensor:
    """A convolution of any dimension whose backward uses B for dx: ``F.conv{n}d(x, W, b, stride,
    padding, dilation, groups)``, or with ``transposed`` ``F.conv_transpose{n}d(x, W, b, stride, padding,
    output_padding, groups, dilation)`` (n = W.dim() - 2; both are ``torch.convolution``).

    dx is the vector-Jacobian product of the same op with B in W's place (one
    ``aten.convolution_backward`` with B in the weight slot, which also gives dW and db).
    ``padding`` is an int or an n-tuple (symmetric zero padding); a layer turns 'same'/'valid'
    and non-zero padding modes into explicit ``F.pad`` plus a numeric padding, as torch does.
    ``angle_scale`` is a 0-dim tensor: dB = angle_scale * dW when B requires grad (None: dB = dW).
    ``input_gradient(dy, input_shape)``, when given, supplies dx in place of B's VJP.
    """
    return aligned_convolution(
        x,
        W,
        b,
        B,
        angle_scale,
        conv_arguments(W.dim() - 2, stride, padding, dilation, transposed, output_padding, groups),
        input_gradient,
    )


ConvArgs = tuple[list[int], list[int], list[int], bool, list[int], int]
"""``(stride, padding, dilation, transposed, output_padding, groups)`` as ``torch.convolution`` takes them."""


def conv_arguments(n: int, stride, padding, dilation, transposed, output_padding, groups) -> ConvArgs:
    """The arguments of an n-d (transposed) convolution, ints or n-sequences each, as ``ConvArgs``."""
    return (
        _tuple(stride, n),
        _tuple(padding, n),
        _tuple(dilation, n),
        bool(transposed),
        _tuple(output_padding, n),
        int(groups),
    )


def aligned_convolution(
    x: Tensor,
    W: Tensor,
    b: Tensor | None,
    B: Tensor,
    angle_scale: Tensor | None,
    conv_args: ConvArgs,
    input_gradient: InputGradient | None = None,
) -> Tensor:
    """``aligned_conv`` with its arguments given as ``ConvArgs`` already (a layer computes them once)."""

    def native(x: Tensor, W: Tensor, b: Tensor | None) -> Tensor:
        return torch.convolution(x, W, b, *conv_args)

    return _apply(AlignedConvFunction, native, x, W, b, B, angle_scale, input_gradient, conv_args)


def aligned_conv2d(
    x: Tensor,
    W: Tensor,
    b: Tensor | None,
    B: Tensor,
    angle_scale: Tensor | None,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
    input_gradient: InputGradient | None = None,
) -> Tensor:
    """``F.conv2d(x, W, b, stride, padding, dilation, groups)`` whose backward uses B for dx:
    ``aligned_conv`` with a 4-d W (dx = conv_transpose2d(dy, B))."""
    return aligned_conv(x, W, b, B, angle_scale, stride, padding, dilation, groups, input_gradient)
