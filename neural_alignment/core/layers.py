"""Aligned layers: ``nn.Linear`` and ``nn.Conv2d`` with a backward kernel B.

Each layer keeps torch's parameters ``weight`` (W) and ``bias`` (names and shapes as in
torch, so state dicts load either way) and adds ``backward_weight`` (B, W's shape), which the
backward pass uses in W's place (see ``core/ops.py``). The layer's ``rule`` (a ``Rule``
object; the core never resolves names) decides:

- ``rule.has_backward_weight`` False (``bp``): no B; the layer runs plain F.linear/F.conv2d.
- ``rule.trains_backward_weight`` False (``fa``): B is a parameter with requires_grad=False.
- ``rule.uses_angle`` (``kp``): B enters the op attached, and the task backward delivers
  dB = angle_scale * dW; otherwise B enters detached and gets no task gradient. A caller that
  sets ``angle_in_backward`` False (the trainer, ``core.alignment.deliver_angle_after_backward``)
  passes B detached too and gives B ``angle_scale * W.grad`` itself after the backward.
- ``rule.feedback`` (a ``core.feedback.Feedback`` or None): attached once when the layer is
  built, called before each forward with gradients enabled, and asked for the input gradient
  in the op's backward (``core/feedback.py``).

The layer contract of docs/internals.md: ``last_input``/``last_output`` (detached refs of the
latest forward), ``project``, ``reconstruct``, ``angle_scale`` (0-dim, not persistent; set
through ``set_angle_scale``, passed to the op as ``transport_scale``), ``rule`` and ``epoch``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from types import EllipsisType
from typing import Any, Generic, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.conv import _ConvNd

from neural_alignment.core.feedback import feedback_active
from neural_alignment.core.ops import (
    ConvArgs,
    InputGradient,
    aligned_convolution,
    aligned_linear,
    autocast_operands,
    conv_arguments,
    conv_kernel_gradient,
    linear_kernel_gradient,
)

__all__ = ["AlignedConv2d", "AlignedLayer", "AlignedLinear", "OpSpec"]

_Source = TypeVar("_Source", bound=nn.Module)


@dataclass(frozen=True)
class OpSpec(Generic[_Source]):
    """A torch module kind and its aligned version.

    ``from_module(module, rule)`` builds the aligned layer with the module's arguments, W and
    bias copied, on the module's device and dtype; B is sampled independently and given W's
    Frobenius norm (see ``match_backward_scale``). It is given modules of type ``source``.
    """

    source: type[_Source]
    from_module: Callable[[_Source, Any], nn.Module]


class AlignedLayer(nn.Module):
    """Mixin for a torch layer with a backward kernel B; the class names the layer contract.

    An ``nn.Module`` (so what it uses of torch's modules is declared), listed before the torch
    class in an aligned layer's bases: the torch class's constructor and parameters are the layer's.
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
    angle_scale_value: float
    """``angle_scale``'s value, as given to ``set_angle_scale`` (no read from the device)."""
    angle_in_backward: bool = True
    """False: B enters the op detached even when the rule weighs ``angle``; whoever set it adds the
    angle update ``angle_scale * W.grad`` to B's gradient after the backward (W.grad is dW then)."""
    batch_mean: Callable[[Tensor], Tensor]
    """Optional, unset unless a backend sets it (``ddp``'s ``sync_alignment_means``); read with a default."""

    def _init_aligned(self, rule, owner: nn.Module | None = None, weight_name: str = "weight") -> None:
        """Set the contract's fields; B is the parameter ``backward_<weight_name>`` of ``owner``
        (the module holding W, this layer unless it is a view of another module's weight)."""
        self.rule = rule
        self.epoch = 0.0
        self.last_input = None
        self.last_output = None
        W = self.weight
        self.register_buffer("angle_scale", torch.zeros((), device=W.device, dtype=W.dtype), persistent=False)
        self.set_angle_scale(float(rule.coefficient("angle", 0.0)))
        owner = self if owner is None else owner
        if rule.has_backward_weight:
            B = nn.Parameter(torch.empty_like(W), requires_grad=bool(rule.trains_backward_weight))
            owner.register_parameter("backward_" + weight_name, B)
            self.reset_backward_weight()
        else:
            owner.register_parameter("backward_" + weight_name, None)
        feedback = getattr(rule, "feedback", None)
        if feedback is not None:
            own_state = set(self.state_dict())
            feedback.attach(self)
            self._feedback_state = set(self.state_dict()) - own_state

    def set_angle_scale(self, value: float) -> None:
        """Fill ``angle_scale`` with ``value`` in place and keep the value (``angle_scale_value``)."""
        self.angle_scale.fill_(value)
        self.angle_scale_value = float(value)

    @property
    def transport_scale(self) -> Tensor | None:
        """The op's ``angle_scale``: None for a scale of exactly 1 (dB = dW itself, no multiply), else the tensor."""
        return None if self.angle_scale_value == 1.0 else self.angle_scale

    @property
    def angle_after_backward(self) -> bool:
        """True when the rule weighs ``angle`` but the op does not deliver it (``angle_in_backward``
        False): B's angle update ``angle_scale * W.grad`` comes after the backward."""
        return self.rule.uses_angle and not self.angle_in_backward

    @property
    def backward_gradient_in_graph(self) -> bool:
        """True when B takes a gradient in the backward (``Rule.backward_gradient_in_graph``), the
        angle update counted only while the op delivers it (``angle_in_backward``)."""
        return self.rule.backward_gradient_in_graph(angle=self.angle_in_backward)

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

    def project(self, x: Tensor, kernel: Tensor, bias: Tensor | None = None) -> Tensor:
        """The layer's own product with ``kernel`` in W's place (docs/internals.md); each layer type gives it."""
        raise NotImplementedError

    def kernel_gradient(self, x: Tensor, dy: Tensor, kernel: Tensor) -> Tensor:
        """d<dy, project(x, K)>/dK at K = ``kernel`` (with no bias): the kernel product of the
        backward, dW's with dy given. Here by autograd through ``project`` (a forward product and
        the kernel product); the built-in layers override it with the kernel product alone."""
        with torch.enable_grad():
            leaf = kernel.detach().requires_grad_()
            (grad,) = torch.autograd.grad(self.project(x.detach(), leaf), leaf, dy)
        return grad

    def reset_backward_weight(self) -> None:
        """Sample B with W's default initialiser (torch's kaiming_uniform_(a=sqrt(5)), the same
        for nn.Linear and every nn.Conv*/nn.ConvTranspose*), independently of W."""
        if self.backward_weight is not None:
            with torch.no_grad():
                nn.init.kaiming_uniform_(self.backward_weight, a=math.sqrt(5))

    def _backward_kernel(self) -> Tensor:
        """B as the op receives it: attached only when the op must deliver the angle update."""
        B = self.backward_weight
        assert B is not None, "called only for a rule with a backward weight"
        return B if self.rule.uses_angle and self.angle_in_backward else B.detach()

    def _remember(self, x: Tensor, y: Tensor) -> Tensor:
        # plain attributes, written past nn.Module.__setattr__'s parameter/buffer checks (every forward)
        self.__dict__["last_input"] = x.detach()
        self.__dict__["last_output"] = y.detach()
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


class DenseLayer(AlignedLayer):
    """The products of a dense layer y = x W^T + b (``AlignedLinear``, an attention's ``Projection``)."""

    def project(self, x: Tensor, kernel: Tensor, bias: Tensor | None = None) -> Tensor:
        """x kernel^T (+ bias)."""
        return F.linear(x, kernel, bias)

    def reconstruct(self, y: Tensor, kernel: Tensor, like: Tensor) -> Tensor:
        """y kernel: the adjoint of ``project`` (``like`` fixes nothing for a dense layer)."""
        return y.matmul(kernel)

    def kernel_gradient(self, x: Tensor, dy: Tensor, kernel: Tensor) -> Tensor:
        """dy^T x (every axis but the last flattened), ``kernel`` fixing nothing."""
        return linear_kernel_gradient(x, dy)


class AlignedLinear(DenseLayer, nn.Linear):
    """``nn.Linear`` whose backward uses B: y = x W^T + b, dx = dy B."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None, *, rule):
        super().__init__(in_features, out_features, bias, device, dtype)
        self._init_aligned(rule)

    def forward(self, x: Tensor) -> Tensor:
        if self.backward_weight is None:
            y = F.linear(x, self.weight, self.bias)
        else:
            input_gradient = self._feedback_path()
            y = aligned_linear(x, self.weight, self.bias, self._backward_kernel(), self.transport_scale, input_gradient)
        return self._remember(x, y)

    @classmethod
    def from_module(cls, module: nn.Linear, rule) -> AlignedLinear:
        """The aligned twin of an ``nn.Linear``, W and bias copied, B at W's scale."""
        W = module.weight
        layer = cls(
            module.in_features, module.out_features, module.bias is not None, device=W.device, dtype=W.dtype, rule=rule
        )
        return _copy_parameters(module, layer)


class AlignedConvolution(AlignedLayer, _ConvNd):
    """The aligned version of any ``nn.Conv{1,2,3}d`` or ``nn.ConvTranspose{1,2,3}d`` (mixed in
    before the torch class): y = conv(x, W) + b as torch computes it, dx = the op's vector-Jacobian
    product with B in W's place (``core.ops.aligned_conv``). Its base ``_ConvNd``, torch's base of
    them all, declares the torch attributes it reads.

    Padding of a convolution: ints/tuples go to the op; 'valid' is 0; 'same' is symmetric when
    d(k-1) is even, otherwise (even kernels) the input is padded explicitly with torch's own split
    (the extra element at the end); a non-zero ``padding_mode`` pads with ``F.pad`` outside the op,
    as torch does. A transposed convolution takes numeric zero padding only (as in torch) and
    ``forward(x, output_size)``'s output size; ``project`` reuses the output padding of the latest
    forward. An unbatched input (no batch axis) runs as a batch of one; ``last_input`` and
    ``last_output`` keep the batch axis.
    """

    _explicit_pad: tuple[int, ...] | None
    _op_padding: tuple[int, ...]
    _forward_output_padding: tuple[int, ...]
    _conv_args: ConvArgs
    _output_padding: Callable[..., list[int]]
    """torch's ``_ConvTransposeNd._output_padding`` (transposed convolutions only)."""

    def __init__(self, *args: Any, rule, **kwargs: Any):
        super().__init__(*args, **kwargs)  # the torch class's constructor
        self._init_aligned(rule)
        self._explicit_pad, self._op_padding = self._resolve_padding()
        self._set_output_padding(tuple(self.output_padding))

    def _set_output_padding(self, output_padding: tuple[int, ...]) -> None:
        """The output padding of the next forward (and of ``project``), and the op's ``ConvArgs``."""
        self.__dict__["_forward_output_padding"] = output_padding
        self.__dict__["_conv_args"] = conv_arguments(
            self.spatial_dims,
            self.stride,
            self._op_padding,
            self.dilation,
            self.transposed,
            output_padding,
            self.groups,
        )

    @property
    def spatial_dims(self) -> int:
        return len(self.kernel_size)

    def _resolve_padding(self) -> tuple[tuple[int, ...] | None, tuple[int, ...]]:
        """(F.pad amounts or None, the symmetric padding the op applies, first spatial axis first)."""
        n = self.spatial_dims
        padding = self.padding  # numbers, or 'valid' or 'same' (torch takes no other string, transposed none)
        if self.transposed:
            assert not isinstance(padding, str), "torch gives a transposed convolution numeric padding"
            return None, tuple(padding)
        pads = tuple(self._reversed_padding_repeated_twice)  # torch's (last left, last right, ..., first ...)
        if self.padding_mode != "zeros":
            return pads, (0,) * n
        if not isinstance(padding, str):
            return None, tuple(padding)
        if padding == "valid":
            return None, (0,) * n
        lefts, rights = pads[0::2], pads[1::2]  # 'same'
        if lefts == rights:
            return None, tuple(reversed(lefts))
        return pads, (0,) * n

    def _padded(self, x: Tensor) -> Tensor:
        if self._explicit_pad is None:
            return x
        mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
        return F.pad(x, self._explicit_pad, mode=mode)

    def forward(self, x: Tensor, output_size: list[int] | None = None) -> Tensor:
        if x.dim() == self.spatial_dims + 1:
            x = x.unsqueeze(0)
            return self.forward(x, output_size).squeeze(0)
        if self.transposed and output_size is not None:
            self._set_output_padding(
                tuple(
                    self._output_padding(
                        x, output_size, self.stride, self.padding, self.kernel_size, self.spatial_dims, self.dilation
                    )
                )
            )
        elif self.transposed and self._forward_output_padding != tuple(self.output_padding):
            self._set_output_padding(tuple(self.output_padding))
        elif output_size is not None:
            raise TypeError(f"{type(self).__name__}.forward() takes no output_size")
        if self.backward_weight is None:
            y = self.project(x, self.weight, self.bias)
        else:
            input_gradient = self._feedback_path()
            y = aligned_convolution(
                self._padded(x),
                self.weight,
                self.bias,
                self._backward_kernel(),
                self.transport_scale,
                self._conv_args,
                input_gradient,
            )
        return self._remember(x, y)

    def project(self, x: Tensor, kernel: Tensor, bias: Tensor | None = None) -> Tensor:
        """What the torch layer computes with ``kernel`` as its weight: conv(x, kernel) (+ bias) with
        the layer's stride, padding (and mode), dilation, groups (and the latest forward's output
        padding, transposed)."""
        x, kernel, bias = autocast_operands(self._padded(x), kernel, bias)  # torch.convolution: no autocast on cpu
        return torch.convolution(x, kernel, bias, *self._conv_args)

    def reconstruct(self, y: Tensor, kernel: Tensor, like: Tensor) -> Tensor:
        """The adjoint of ``project`` with zero padding, shaped like ``like``: conv_transpose(y, kernel)
        for a convolution (explicit padding cropped off again), conv(y, kernel) for a transposed one."""
        n = self.spatial_dims
        y, kernel = autocast_operands(y, kernel)
        pads = self._explicit_pad or (0,) * (2 * n)
        before = tuple(reversed(pads[0::2]))  # first spatial axis first
        after = tuple(reversed(pads[1::2]))
        if self.transposed:
            return torch.convolution(
                y, kernel, None, self.stride, self._op_padding, self.dilation, False, (0,) * n, self.groups
            )
        target = [size + lo + hi for size, lo, hi in zip(like.shape[-n:], before, after, strict=True)]
        output_padding = [
            size - ((m - 1) * s - 2 * p + d * (k - 1) + 1)
            for size, m, s, p, d, k in zip(
                target, y.shape[-n:], self.stride, self._op_padding, self.dilation, self.kernel_size, strict=True
            )
        ]
        x = torch.convolution(
            y, kernel, None, self.stride, self._op_padding, self.dilation, True, output_padding, self.groups
        )
        crop = tuple(slice(lo, lo + size) for lo, size in zip(before, like.shape[-n:], strict=True))
        index: tuple[EllipsisType | slice, ...] = (..., *crop)
        return x[index]

    def kernel_gradient(self, x: Tensor, dy: Tensor, kernel: Tensor) -> Tensor:
        """The kernel product of ``project``'s backward alone (``kernel`` gives its shape)."""
        x, dy, kernel = autocast_operands(self._padded(x), dy, kernel)
        return conv_kernel_gradient(x, dy, kernel, self._conv_args)

    @classmethod
    def from_module(cls, module: _ConvNd, rule) -> AlignedConvolution:
        """The aligned twin of a torch convolution, every argument kept, W and bias copied, B at W's scale."""
        W = module.weight
        arguments = dict(
            in_channels=module.in_channels,
            out_channels=module.out_channels,
            kernel_size=module.kernel_size,
            stride=module.stride,
            padding=module.padding,
            dilation=module.dilation,
            groups=module.groups,
            bias=module.bias is not None,
            padding_mode=module.padding_mode,
        )
        if module.transposed:
            arguments["output_padding"] = module.output_padding
        layer = cls(**arguments, device=W.device, dtype=W.dtype, rule=rule)
        return _copy_parameters(module, layer)


class AlignedConv1d(AlignedConvolution, nn.Conv1d):
    """``nn.Conv1d`` whose backward uses B (``AlignedConvolution``); torch's arguments plus ``rule``."""


class AlignedConv2d(AlignedConvolution, nn.Conv2d):
    """``nn.Conv2d`` whose backward uses B (``AlignedConvolution``); torch's arguments plus ``rule``."""


class AlignedConv3d(AlignedConvolution, nn.Conv3d):
    """``nn.Conv3d`` whose backward uses B (``AlignedConvolution``); torch's arguments plus ``rule``."""


class AlignedConvTranspose1d(AlignedConvolution, nn.ConvTranspose1d):
    """``nn.ConvTranspose1d`` whose backward uses B (``AlignedConvolution``); torch's arguments plus ``rule``."""


class AlignedConvTranspose2d(AlignedConvolution, nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` whose backward uses B (``AlignedConvolution``); torch's arguments plus ``rule``."""


class AlignedConvTranspose3d(AlignedConvolution, nn.ConvTranspose3d):
    """``nn.ConvTranspose3d`` whose backward uses B (``AlignedConvolution``); torch's arguments plus ``rule``."""


CONVOLUTIONS: dict[type, type] = {
    nn.Conv1d: AlignedConv1d,
    nn.Conv2d: AlignedConv2d,
    nn.Conv3d: AlignedConv3d,
    nn.ConvTranspose1d: AlignedConvTranspose1d,
    nn.ConvTranspose2d: AlignedConvTranspose2d,
    nn.ConvTranspose3d: AlignedConvTranspose3d,
}
"""{torch convolution class: its aligned class}."""


def aligned_layers(model: nn.Module) -> list[tuple[str, AlignedLayer]]:
    """(qualified name, layer) for every aligned layer of ``model`` (itself included), in module order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, AlignedLayer)]


_Built = TypeVar("_Built", AlignedLinear, AlignedConvolution)


def _copy_parameters(module: nn.Linear | _ConvNd, layer: _Built) -> _Built:
    """Copy W, bias and the training flag of ``module`` into ``layer``, then give B W's scale
    (``match_backward_scale``); returns ``layer``."""
    with torch.no_grad():
        layer.weight.copy_(module.weight)
        layer.weight.requires_grad_(module.weight.requires_grad)
        if module.bias is not None:
            assert layer.bias is not None, "built with a bias, as the module has one"
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
