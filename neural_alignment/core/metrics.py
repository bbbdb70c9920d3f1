"""Per-layer alignment metrics.

- weight angle: the angle in degrees between vec(W) and vec(B);
- norm ratio: ||B||_F / ||W||_F;
- gradient angle: the angle between the gradient the aligned network propagates to a layer's
  input and the true backprop gradient there (same weights, B := W, rules' feedback paths off), on one batch.

A layer without B (rule ``bp``) propagates with W itself: its weight angle is 0 and its norm
ratio 1 by definition. These functions read tensors on the host, all of a call's values at once
(one graph on a lazy device such as XLA); call them between steps.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from neural_alignment.core.feedback import native_backward
from neural_alignment.core.layers import aligned_layers

__all__ = ["angle_degrees", "angle_tensor", "gradient_angle", "layer_metrics"]


def angle_tensor(a: Tensor, b: Tensor) -> Tensor:
    """The angle between vec(a) and vec(b) in degrees, as a 0-dim float64 tensor on their device:
    2 atan2(|u - v|, |u + v|) with u, v the unit vectors (stable for nearly parallel vectors,
    unlike acos of the cosine)."""
    u = a.detach().reshape(-1).double()
    v = b.detach().reshape(-1).double()
    u = u / u.norm()
    v = v / v.norm()
    return torch.rad2deg(2.0 * torch.atan2((u - v).norm(), (u + v).norm()))


def angle_degrees(a: Tensor, b: Tensor) -> float:
    """:func:`angle_tensor` read as a float."""
    return angle_tensor(a, b).item()


def _read(values: dict[str, Tensor]) -> dict[str, float]:
    """The 0-dim tensors of ``values`` read to the host at once (one device graph on a lazy device)."""
    if not values:
        return {}
    return dict(zip(values, torch.stack(list(values.values())).tolist(), strict=True))


def layer_metrics(model: nn.Module) -> dict[str, dict[str, float]]:
    """{layer name: {"weight_angle": degrees between vec(W) and vec(B), "norm_ratio": ||B||/||W||}},
    every layer's values read to the host together."""
    values, fixed = {}, {}
    for name, layer in aligned_layers(model):
        W, B = layer.weight, layer.backward_weight
        if B is None:
            fixed[name] = {"weight_angle": 0.0, "norm_ratio": 1.0}
        else:
            values[f"{name}\0weight_angle"] = angle_tensor(W, B)
            values[f"{name}\0norm_ratio"] = B.detach().double().norm() / W.detach().double().norm()
    read = _read(values)
    return {
        name: fixed.get(name) or {key: read[f"{name}\0{key}"] for key in ("weight_angle", "norm_ratio")}
        for name, _ in aligned_layers(model)
    }


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
    return _read({name: angle_tensor(propagated[name], true[name]) for name in propagated if name in true})


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
