"""Aligned layers: ``nn.Linear`` and ``nn.Conv2d`` with a backward kernel B.

Each layer keeps torch's parameters ``weight`` (W) and ``bias`` (names and shapes as in
torch, so state dicts load either way) and adds ``backward_weight`` (B, W's shape), which the
backward pass uses in W's place (see ``core/ops.py``). The layer's ``rule`` (a ``Rule``
object; the core never resolves names) decides:

- ``rule.has_backward_weight`` False (``bp``): no B; the layer runs plain F.linear/F.conv2d.
- ``rule.trains_backward_weight`` False (``fa``): B is a parameter with requires_grad=False.
- ``rule.uses_angle`` (``kp``): B enters the op attached, and the task backward delivers
  dB = angle_scale * dW; otherwise B enters detached and gets no task gradient.
- ``rule.feedback`` (a ``core.feedback.Feedback`` or None): attached once when the layer is
  built, called before each forward with gradients enabled, and asked for the input gradient
  in the op's backward (``core/feedback.py``).

The layer contract of docs/internals.md: ``last_input``/``last_output`` (detached refs of the
latest forward), ``project``, ``reconstruct``, ``angle_scale`` (0-dim, not persistent),
``rule`` and ``epoch``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from neural_alignment.core.feedback import feedback_active
from neural_alignment.core.ops import InputGradient, aligned_conv2d, aligned_linear

__all__ = ["AlignedConv2d", "AlignedLayer", "AlignedLinear", "OpSpec"]


@dataclass(frozen=True)
class OpSpec:
    """A torch module kind and its aligned version.

    ``from_module(module, rule)`` builds the aligned layer with the module's arguments, W and
    bias copied, on the module's device and dtype; B is sampled independently and given W's
    Frobenius norm (see ``match_backward_scale``).
    """

    source: type
    from_module: Callable[[Any, Any], nn.Module]  # called with a module of type ``source``


class AlignedLayer(nn.Module):
    """Mixin (an ``nn.Module``) for a torch layer with a backward kernel B; the class names the layer contract.

    Subclasses call ``_init_aligned(rule)`` after the torch constructor and implement
    ``project``/``reconstruct``/``forward``.
    """

    rule: Any
    epoch: float
    last_input: Tensor | None
    last_output: Tensor | None
    weight: Tensor
    backward_weight: nn.Parameter | None
    angle_scale: Tensor
    batch_mean: Callable[[Tensor], Tensor]  # optional: a data-parallel backend sets one (core/context.py)

    def _init_aligned(self, rule) -> None:
        self.rule = rule
        self.epoch = 0.0
        self.last_input = None
        self.last_output = None
        W = self.weight
        self.register_buffer(
            "angle_scale",
            torch.tensor(float(rule.coefficient("angle", 0.0)), device=W.device, dtype=W.dtype),
            persistent=False,
        )
        if rule.has_backward_weight:
            B = nn.Parameter(torch.empty_like(W), requires_grad=bool(rule.trains_backward_weight))
            self.backward_weight = B
            self.reset_backward_weight()
        else:
            self.register_parameter("backward_weight", None)
        feedback = getattr(rule, "feedback", None)
        if feedback is not None:
            own_state = set(self.state_dict())
            feedback.attach(self)
            self._feedback_state = set(self.state_dict()) - own_state

    def _feedback_path(self) -> InputGradient | None:
        """Run the rule's feedback before this forward and return the op's ``input_gradient``
        (None without an active feedback or gradients: the op's own dy B). Decided here, in the
        forward's thread, because CUDA runs the backward in another one."""
        feedback = getattr(self.rule, "feedback", None)
        if not (torch.is_grad_enabled() and feedback_active(feedback)):
            return None
        with torch.no_grad():
            feedback.before_forward(self)
        return lambda dy, input_shape: feedback.input_gradient(self, dy, input_shape)

    def reset_backward_weight(self) -> None:
        """Sample B with W's default initialiser (torch's kaiming_uniform_(a=sqrt(5)), the same
        for nn.Linear and nn.Conv2d), independently of W."""
        if self.backward_weight is not None:
            with torch.no_grad():
                nn.init.kaiming_uniform_(self.backward_weight, a=math.sqrt(5))

    def _backward_kernel(self) -> Tensor:
        """B as the op receives it: attached only when the op must deliver the angle update."""
        B = self.backward_weight
        assert B is not None  # called only by a layer's forward with a B
        return B if self.rule.uses_angle else B.detach()

    def _remember(self, x: Tensor, y: Tensor) -> Tensor:
        self.last_input = x.detach()
        self.last_output = y.detach()
        return y

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        """Load torch's own state dicts: a missing ``backward_weight`` (or state its rule's feedback
        attached) keeps its init."""
        before = len(missing_keys)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        for name in ("backward_weight", *getattr(self, "_feedback_state", ())):
            key = prefix + name
            if key in missing_keys[before:]:
                missing_keys.remove(key)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rule={self.rule.name}"


class AlignedLinear(AlignedLayer, nn.Linear):
    """``nn.Linear`` whose backward uses B: y = x W^T + b, dx = dy B."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None, *, rule):
        super().__init__(in_features, out_features, bias, device, dtype)
        self._init_aligned(rule)

    def forward(self, x: Tensor) -> Tensor:
        if self.backward_weight is None:
            y = F.linear(x, self.weight, self.bias)
        else:
            input_gradient = self._feedback_path()
            y = aligned_linear(x, self.weight, self.bias, self._backward_kernel(), self.angle_scale, input_gradient)
        return self._remember(x, y)

    def project(self, x: Tensor, kernel: Tensor, bias: Tensor | None = None) -> Tensor:
        """x kernel^T (+ bias)."""
        return F.linear(x, kernel, bias)

    def reconstruct(self, y: Tensor, kernel: Tensor, like: Tensor) -> Tensor:
        """y kernel: the adjoint of ``project`` (``like`` fixes nothing for a dense layer)."""
        return y.matmul(kernel)

    @classmethod
    def from_module(cls, module: nn.Linear, rule) -> AlignedLinear:
        """The aligned twin of an ``nn.Linear``, W and bias copied, B at W's scale."""
        W = module.weight
        layer = cls(
            module.in_features, module.out_features, module.bias is not None, device=W.device, dtype=W.dtype, rule=rule
        )
        return _copy_parameters(module, layer)


class AlignedConv2d(AlignedLayer, nn.Conv2d):
    """``nn.Conv2d`` whose backward uses B: y = conv2d(x, W) + b, dx = conv_transpose2d(dy, B).

    Padding: ints/pairs go to the op; 'valid' is 0; 'same' is symmetric when d(k-1) is even,
    otherwise (even kernels) the input is padded explicitly with torch's own split (extra
    row/column at the end); non-zero ``padding_mode`` pads with ``F.pad`` outside the op, as
    ``nn.Conv2d`` does.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: Literal["zeros", "reflect", "replicate", "circular"] = "zeros",
        device=None,
        dtype=None,
        *,
        rule,
    ):
        super().__init__(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode, device, dtype
        )
        self._init_aligned(rule)
        self._explicit_pad, self._op_padding = self._resolve_padding()

    def _resolve_padding(self) -> tuple[tuple[int, ...] | None, tuple[int, int]]:
        """(F.pad amounts or None, the symmetric padding the op applies)."""
        pads = tuple(self._reversed_padding_repeated_twice)  # torch's (left, right, top, bottom)
        if self.padding_mode != "zeros":
            return pads, (0, 0)
        if self.padding == "valid":
            return None, (0, 0)
        if self.padding == "same":
            left_w, right_w, top_h, bottom_h = pads
            if (left_w, top_h) == (right_w, bottom_h):
                return None, (top_h, left_w)
            return pads, (0, 0)
        assert not isinstance(self.padding, str)  # 'valid' and 'same' are the only strings torch accepts
        return None, (self.padding[0], self.padding[1])

    def _padded(self, x: Tensor) -> Tensor:
        if self._explicit_pad is None:
            return x
        mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
        return F.pad(x, self._explicit_pad, mode=mode)

    def forward(self, x: Tensor) -> Tensor:
        if self.backward_weight is None:
            y = self.project(x, self.weight, self.bias)
        else:
            input_gradient = self._feedback_path()
            y = aligned_conv2d(
                self._padded(x),
                self.weight,
                self.bias,
                self._backward_kernel(),
                self.angle_scale,
                self.stride,
                self._op_padding,
                self.dilation,
                self.groups,
                input_gradient,
            )
        return self._remember(x, y)

    def project(self, x: Tensor, kernel: Tensor, bias: Tensor | None = None) -> Tensor:
        """conv2d(x, kernel) (+ bias) with the layer's stride, padding (and mode), dilation, groups:
        exactly what ``nn.Conv2d`` computes with ``kernel`` as its weight."""
        return self._conv_forward(x, kernel, bias)

    def reconstruct(self, y: Tensor, kernel: Tensor, like: Tensor) -> Tensor:
        """conv_transpose2d(y, kernel) with ``like``'s spatial size: the adjoint of ``project``
        with zero padding (explicit padding is cropped off again)."""
        left_w, right_w, top_h, bottom_h = self._explicit_pad or (0, 0, 0, 0)
        target = (like.shape[-2] + top_h + bottom_h, like.shape[-1] + left_w + right_w)
        output_padding = [
            size - ((n - 1) * s - 2 * p + d * (k - 1) + 1)
            for size, n, s, p, d, k in zip(
                target, y.shape[-2:], self.stride, self._op_padding, self.dilation, self.kernel_size, strict=True
            )
        ]
        x = F.conv_transpose2d(
            y, kernel, None, self.stride, self._op_padding, output_padding, self.groups, self.dilation
        )
        return x[..., top_h : top_h + like.shape[-2], left_w : left_w + like.shape[-1]]

    @classmethod
    def from_module(cls, module: nn.Conv2d, rule) -> AlignedConv2d:
        """The aligned twin of an ``nn.Conv2d``, every argument kept, W and bias copied, B at W's scale."""
        W = module.weight
        layer = cls(
            module.in_channels,
            module.out_channels,
            module.kernel_size,
            module.stride,
            module.padding,
            module.dilation,
            module.groups,
            module.bias is not None,
            module.padding_mode,
            device=W.device,
            dtype=W.dtype,
            rule=rule,
        )
        return _copy_parameters(module, layer)


def aligned_layers(model: nn.Module) -> list[tuple[str, AlignedLayer]]:
    """(qualified name, layer) for every aligned layer of ``model`` (itself included), in module order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, AlignedLayer)]


_Aligned = TypeVar("_Aligned", AlignedLinear, AlignedConv2d)


def _copy_parameters(module: nn.Linear | nn.Conv2d, layer: _Aligned) -> _Aligned:
    """Copy W, bias and the training flag of ``module`` into ``layer``, then give B W's scale
    (``match_backward_scale``); returns ``layer``."""
    with torch.no_grad():
        layer.weight.copy_(module.weight)
        layer.weight.requires_grad_(module.weight.requires_grad)
        if module.bias is not None:
            assert layer.bias is not None  # built with a bias because the module has one
            layer.bias.copy_(module.bias)
            layer.bias.requires_grad_(module.bias.requires_grad)
    match_backward_scale(layer)
    return layer.train(module.training)


def match_backward_scale(layer: AlignedLayer) -> None:
    """B <- B ||W||_F / ||B||_F (unless W or B is zero).

    A converted module's W may come from any initialiser (torchvision's ResNets use He normal
    with fan-out; a trained model has its own scale), which a module does not record. B keeps
    its independent random direction but takes W's scale, as if sampled by W's initialiser:
    the backward signal through each layer then keeps the order of backprop's, instead of shrinking
    by ||B||/||W|| per layer.
    """
    B = layer.backward_weight
    if B is None:
        return
    with torch.no_grad():
        w_norm, b_norm = layer.weight.norm(), B.norm()
        if w_norm > 0 and b_norm > 0:
            B.mul_(w_norm / b_norm)
