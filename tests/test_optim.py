"""Optimizers by name, learning-rate schedules of the global step, noisy updates."""

import copy
import math

import pytest
import torch

from neural_alignment.core.errors import UserError
from neural_alignment.runtime.optim import ComponentOptimizer, add_update_noise, make_lr_schedule, make_optimizer


def test_constant_schedule_is_the_base_lr():
    lr = make_lr_schedule(0.3, None, steps_per_epoch=10, batch_size=64)
    assert [lr(s) for s in (0, 7, 1000)] == [0.3, 0.3, 0.3]


def test_warmup_then_drops_at_epochs():
    cfg = {"kind": "step", "warmup_epochs": 2, "drops": [3, 5], "factor": 0.1}
    lr = make_lr_schedule(0.5, cfg, steps_per_epoch=4, batch_size=256)
    # epoch = step / 4: linear warmup 0.5 * epoch / 2 below epoch 2, then 0.5, 0.05 from epoch 3, 0.005 from epoch 5
    expected = {
        0: 0.0,
        1: 0.5 * 0.25 / 2,
        4: 0.5 * 1 / 2,
        7: 0.5 * 1.75 / 2,
        8: 0.5,
        11: 0.5,
        12: 0.05,
        19: 0.05,
        20: 0.005,
    }
    for step, value in expected.items():
        assert lr(step) == pytest.approx(value, rel=1e-12), step


def test_rescale_lr_by_batch_over_256_and_a_list_multiplies():
    cfg = [{"kind": "step", "drops": [1]}, {"kind": "constant", "value": 0.5}]
    lr = make_lr_schedule(0.1, cfg, steps_per_epoch=5, batch_size=1024, rescale_lr=True)
    assert lr(0) == pytest.approx(0.1 * 4 * 0.5)
    assert lr(5) == pytest.approx(0.1 * 4 * 0.5 * 0.1)


def test_shift_delays_the_schedule():
    cfg = {"kind": "step", "warmup_epochs": 1}
    lr = make_lr_schedule(1.0, cfg, steps_per_epoch=10, batch_size=256, shift=2.0)
    assert lr(20) == 0.0 and lr(25) == pytest.approx(0.5) and lr(30) == 1.0
    assert lr.epoch(25) == pytest.approx(0.5)


def test_component_sets_lr_of_the_step_before_updating():
    p = torch.nn.Parameter(torch.zeros(3))
    lr = make_lr_schedule(1.0, {"kind": "step", "drops": [1], "factor": 0.5}, steps_per_epoch=2, batch_size=256)
    component = ComponentOptimizer(make_optimizer("gd", [p], 1.0), lr)
    for step in range(3):
        p.grad = torch.ones(3)
        component.step(step)
    # updates of lr 1, 1 (epoch 0, 0.5), then 0.5 (epoch 1)
    assert torch.equal(p.detach(), torch.full((3,), -2.5))
    assert component.optimizer.param_groups[0]["lr"] == 0.5


def test_optimizers_by_name():
    p = [torch.nn.Parameter(torch.zeros(2))]
    nesterov = make_optimizer("nesterov", p, 0.1, momentum=0.9, weight_decay=1e-4)
    assert (
        isinstance(nesterov, torch.optim.SGD) and nesterov.defaults["nesterov"] and nesterov.defaults["momentum"] == 0.9
    )
    assert isinstance(make_optimizer("adam", p, 1e-3), torch.optim.Adam)
    assert isinstance(make_optimizer("adamw", p, 1e-3, weight_decay=0.1), torch.optim.AdamW)
    assert make_optimizer("gd", p, 0.1).defaults["momentum"] == 0
    with pytest.raises(UserError, match="momentum"):
        make_optimizer("gd", p, 0.1, momentum=0.9)
    with pytest.raises(UserError, match="momentum > 0"):
        make_optimizer("nesterov", p, 0.1)
    with pytest.raises(UserError, match=r"unknown optimizer 'sdg'.*sgd"):
        make_optimizer("sdg", p, 0.1)


def test_noisy_update_has_mean_zero_and_std_noise_times_lr():
    torch.manual_seed(0)
    noisy = torch.nn.Parameter(torch.zeros(400_000, dtype=torch.float64))
    quiet = torch.nn.Parameter(torch.zeros(10, dtype=torch.float64))
    lr = make_lr_schedule(0.5, None, steps_per_epoch=1, batch_size=256)
    component = ComponentOptimizer(make_optimizer("gd", [noisy, quiet], 0.5), lr, noise_std=0.2, noisy=[noisy])
    noisy.grad, quiet.grad = torch.zeros_like(noisy), torch.zeros_like(quiet)  # the update itself is 0
    component.step(0)
    delta = noisy.detach()
    std = 0.2 * 0.5
    assert abs(delta.mean().item()) < 5 * std / math.sqrt(delta.numel())
    assert delta.std().item() == pytest.approx(std, rel=0.01)
    # a normal's fourth standardized moment is 3
    assert (delta.pow(4).mean() / delta.pow(2).mean() ** 2).item() == pytest.approx(3.0, rel=0.03)
    assert torch.equal(quiet.detach(), torch.zeros(10, dtype=torch.float64))


def test_noise_adds_to_the_gradient_update():
    torch.manual_seed(1)
    p = torch.nn.Parameter(torch.zeros(5))
    p.grad = torch.ones(5)
    lr = make_lr_schedule(0.1, None, steps_per_epoch=1, batch_size=256)
    ComponentOptimizer(make_optimizer("gd", [p], 0.1), lr, noise_std=1.0, noisy=[p]).step(0)
    torch.manual_seed(1)
    expected = torch.zeros(5) - 0.1
    add_update_noise([expected], 0.1)
    assert torch.equal(p.detach(), expected)


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("sgd", {"momentum": 0.9, "weight_decay": 1e-2}),
        ("nesterov", {"momentum": 0.9, "weight_decay": 1e-2}),
        ("gd", {}),
        ("adam", {"weight_decay": 1e-2}),
        ("adamw", {"weight_decay": 1e-2}),
    ],
)
def test_fused_kernels_update_as_torchs_per_tensor_loop_and_load_its_state(name, kwargs):
    """CPU parameters get torch's fused kernel: five steps agree with the per-tensor loop's (float64),
    and the loop's state dict loads into the fused optimizer without turning it off."""
    torch.manual_seed(0)
    start = [torch.randn(4, 3, dtype=torch.float64), torch.randn(5, dtype=torch.float64)]
    grads = [[torch.randn_like(p) for p in start] for _ in range(5)]
    fused = [torch.nn.Parameter(p.clone()) for p in start]
    loop = [torch.nn.Parameter(p.clone()) for p in start]
    ours = make_optimizer(name, fused, 0.1, **kwargs)
    defaults = {k: v for k, v in ours.defaults.items() if k != "decoupled_weight_decay"}  # AdamW's own
    reference = type(ours)(loop, **{**defaults, "fused": None, "foreach": False})
    assert ours.defaults["fused"] is True
    for step_grads in grads:
        for params, optimizer in ((fused, ours), (loop, reference)):
            for p, g in zip(params, step_grads, strict=True):
                p.grad = g.clone()
            optimizer.step()
    for a, b in zip(fused, loop, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    resumed = [torch.nn.Parameter(p.detach().clone()) for p in loop]
    component = ComponentOptimizer(make_optimizer(name, resumed, 0.1, **kwargs), None)
    component.load_state_dict(copy.deepcopy(reference.state_dict()))  # else both would share the buffers
    assert component.optimizer.param_groups[0]["fused"] is True
    for params, optimizer in ((resumed, component.optimizer), (loop, reference)):  # the loaded state carries on
        for p, g in zip(params, grads[0], strict=True):
            p.grad = g.clone()
        optimizer.step()
    for a, b in zip(resumed, loop, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_parameters_on_a_device_without_fused_kernels_keep_torchs_default():
    meta = [torch.nn.Parameter(torch.zeros(2, device="meta"))]
    assert not make_optimizer("adam", meta, 1e-3).defaults["fused"]


@pytest.mark.parametrize(
    "name, couples", [("sgd", True), ("nesterov", True), ("gd", True), ("adam", True), ("adamw", False)]
)
def test_extra_weight_decay_is_a_gradient_term_where_the_optimizer_couples_it(name, couples):
    """set_extra_weight_decay(d) on a coupling optimizer updates as the gradient g + d p would, on
    top of the recipe's own decay (restored by set_extra_weight_decay(0)); AdamW's decay is decoupled."""
    torch.manual_seed(0)
    start, grad = torch.randn(5, dtype=torch.float64), torch.randn(5, dtype=torch.float64)

    def component(weight_decay):
        p = torch.nn.Parameter(start.clone())
        momentum = 0.0 if name == "gd" else 0.9
        optimizer = make_optimizer(name, [p], 0.1, momentum, weight_decay)
        return p, ComponentOptimizer(optimizer, make_lr_schedule(0.1, None, 1, 256))

    p, folded = component(0.01)
    assert folded.couples_weight_decay is couples
    if not couples:
        return
    q, plain = component(0.01)
    for step in range(3):
        p.grad, q.grad = grad.clone(), grad + 0.5 * q.detach()
        folded.set_extra_weight_decay(0.5)
        folded.step(step)
        plain.step(step)
    torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)
    folded.set_extra_weight_decay(0.0)
    assert [g["weight_decay"] for g in folded.optimizer.param_groups] == [0.01]


@pytest.mark.parametrize(
    "name, kwargs",
    [("sgd", {"momentum": 0.9}), ("nesterov", {"momentum": 0.9}), ("gd", {}), ("adam", {}), ("adamw", {})],
)
def test_gradient_factor_steps_as_the_multiplied_gradient_and_leaves_the_gradient_tensor_alone(name, kwargs):
    """With set_gradient_factor(k) the optimizer steps on k h + d p from p.grad = h (d: own plus extra
    decay, coupled where the optimizer couples it) as a plain one on that gradient written out; k
    changes sign and size between steps; h, which may be another parameter's memory, is never written."""
    torch.manual_seed(0)
    start = torch.randn(6, dtype=torch.float64)
    hs = [torch.randn(6, dtype=torch.float64) for _ in range(6)]
    factors = [-0.02, -0.02, 3.0, 3.0, -0.5, 1.0]

    def component():
        p = torch.nn.Parameter(start.clone())
        return p, ComponentOptimizer(
            make_optimizer(name, [p], 0.1, weight_decay=0.01, **kwargs), make_lr_schedule(0.1, None, 1, 256)
        )

    p, factored = component()
    q, plain = component()
    couples = plain.couples_weight_decay
    for step, (h, k) in enumerate(zip(hs, factors, strict=True)):
        kept = h.clone()
        factored.set_extra_weight_decay(0.3 if couples else 0.0)  # as the trainer: only where it couples
        factored.set_gradient_factor(k)
        p.grad = h
        q.grad = k * h + (0.3 * q.detach() if couples else 0.0)
        factored.step(step)
        plain.step(step)
        assert torch.equal(h, kept)
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-13)
    factored.set_gradient_factor(-4.0)
    resumed_p = torch.nn.Parameter(p.detach().clone())
    resumed = ComponentOptimizer(
        make_optimizer(name, [resumed_p], 0.1, weight_decay=0.01, **kwargs), make_lr_schedule(0.1, None, 1, 256)
    )
    saved = copy.deepcopy(factored.state_dict())
    assert saved.get("gradient_factor", 1.0) == -4.0
    resumed.load_state_dict(saved)  # the moments in the saved unit: the next step equals the original's
    for params, c in ((p, factored), (resumed_p, resumed)):
        c.set_extra_weight_decay(0.3 if couples else 0.0)
        c.set_gradient_factor(-4.0)
        params.grad = hs[0]
        c.step(6)
    assert torch.equal(p, resumed_p)
