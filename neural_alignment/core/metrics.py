"""Per-layer alignment metrics.

- weight angle: the angle in degrees between vec(W) and vec(B);
- norm ratio: ||B||_F / ||W||_F;
- gradient angle: the angle between the gradient the aligned network propagates to a layer's
  input and the true backprop gradient there (same weights, B := W, rules' feedback paths off), on one batch.

A layer without B (rule ``bp``) propagates with W itself: its weight angle is 0 and its norm
ratio 1 by definition. These functions read tensors on the host; call them between steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from neural_alignment.core.feedback import native_backward
from neural_alignment.core.layers import aligned_layers

__all__ = ["angle_degrees", "gradient_angle", "layer_metrics"]


def angle_degrees(a: Tensor, b: Tensor) -> float:
    """The angle between vec(a) and vec(b) in degrees, 2 atan2(|u - v|, |u + v|) with u, v the
    unit vectors (stable for nearly parallel vectors, unlike acos of the cosine)."""
    u = a.detach().reshape(-1).double()
    v = b.detach().reshape(-1).double()
    u = u / u.norm()
    v = v / v.norm()
    return math.degrees(2.0 * math.atan2((u - v).norm().item(), (u + v).norm().item()))


def layer_metrics(model: nn.Module) -> dict[str, dict[str, float]]:
    """{layer name: {"weight_angle": degrees between vec(W) and vec(B), "norm_ratio": ||B||/||W||}}."""
    metrics = {}
    for name, layer in aligned_layers(model):
        W, B = layer.weight, layer.backward_weight
        if B is None:
            metrics[name] = {"weight_angle": 0.0, "norm_ratio": 1.0}
        else:
            ratio = (B.detach().double().norm() / W.detach().double().norm()).item()
            metrics[name] = {"weight_angle": angle_degrees(W, B), "norm_ratio": ratio}
    return metrics


def gradient_angle(model: nn.Module, batch: Any, loss_fn: Callable[[Tensor, Tensor], Tensor]) -> dict[str, float]:
    """{layer name: degrees between the propagated and the true gradient of the loss at its input}.

    Layers whose input the loss does not reach are left out.
    ``batch`` is ``(inputs, targets)``; the loss is ``loss_fn(model(inputs), targets)``. The two
    passes see the same random numbers (dropout) and the model keeps its mode; afterwards the
    parameters' ``.grad``, the buffers (BatchNorm statistics), the layers' ``last_input`` /
    ``last_output`` and the random number generators are as they were.
    """
    inputs, targets = batch
    name_of = {id(p): name for name, p in model.named_parameters(remove_duplicate=False)}
    tied = {  # B's parameter name (an attention's backward_in_proj_weight too) -> W
        name_of[id(layer.backward_weight)]: layer.weight
        for _, layer in aligned_layers(model)
        if layer.backward_weight is not None
    }
    with _state_kept(model):
        propagated = _input_gradients(model, inputs, targets, loss_fn, {})
        with native_backward():
            true = _input_gradients(model, inputs, targets, loss_fn, tied)
    return {name: angle_degrees(propagated[name], true[name]) for name in propagated if name in true}


def _input_gradients(model, inputs, targets, loss_fn, replaced: dict[str, Tensor]) -> dict[str, Tensor]:
    """d loss / d (input of each aligned layer), with the parameters in ``replaced`` swapped in."""
    seen: dict[str, Tensor] = {}

    def capture(name):
        def hook(module, args):
            x = args[0] if args[0].requires_grad else args[0].detach().requires_grad_()
            seen[name] = x
            return (x, *args[1:])

        return hook

    handles = [layer.register_forward_pre_hook(capture(name)) for name, layer in aligned_layers(model)]
    try:
        with torch.random.fork_rng(devices=_cuda_devices(inputs.device)):
            loss = loss_fn(functional_call(model, replaced, (inputs,), strict=False), targets)
            names = list(seen)
            grads = torch.autograd.grad(loss, [seen[n] for n in names], allow_unused=True)
    finally:
        for handle in handles:
            handle.remove()
    return {n: g for n, g in zip(names, grads, strict=True) if g is not None}


def _cuda_devices(device: torch.device) -> list[int]:
    return [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []


@contextmanager
def _state_kept(model: nn.Module):
    """Restore buffers and the layers' last_input/last_output on exit; RNG kept by fork_rng.

    A buffer a module registers during the passes (state drawn on first use, e.g. direct
    feedback's matrix from the layer's seed) is kept as it is: it had no earlier value."""
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    remembered = {name: (m.last_input, m.last_output) for name, m in aligned_layers(model)}
    try:
        yield
    finally:
        with torch.no_grad():
            for name, b in model.named_buffers():
                if name in buffers:
                    b.copy_(buffers[name])
        for name, m in aligned_layers(model):
            m.last_input, m.last_output = remembered[name]
