"""Rules: the seven built-in specs, build_rule's overrides and errors, coefficients with
schedules, the regularizer as a weighted sum, and the model-wide alignment_loss/set_epoch."""

import pytest
import torch
from torch import nn

from neural_alignment.core.alignment import (
    add_angle_gradients,
    add_weight_gradients,
    alignment_loss,
    backward_decay,
    deliver_angle_after_backward,
    gradient_multiples,
    set_epoch,
)
from neural_alignment.core.context import AlignmentContext
from neural_alignment.core.errors import UserError
from neural_alignment.core.layers import AlignedConv2d, AlignedLinear
from neural_alignment.core.rules import AKROUT_FLAGS, FLAG_NAMES, Flags, RuleSpec, build_rule
from neural_alignment.plugins.primitives import BUILTIN_PRIMITIVES
from neural_alignment.plugins.rules import BUILTIN_RULES, KP_DECAY
from neural_alignment.registry import Registry

TABLE = {p.name: p for p in BUILTIN_PRIMITIVES}
SPECS = {s.name: s for s in BUILTIN_RULES}
F64 = torch.float64


def rule(name, **overrides):
    return build_rule(SPECS[name], TABLE, **overrides)


def forwarded(layer_rule, seed=0, bias=True):
    torch.manual_seed(seed)
    layer = AlignedLinear(4, 3, bias=bias, rule=layer_rule, dtype=F64)
    layer(torch.randn(5, 4, dtype=F64))
    return layer


def sq(t):
    return t.detach().pow(2).sum()


# --- the seven specs -----------------------------------------------------------------------
DEFAULT_WEIGHTS = {
    "bp": {},
    "fa": {},
    "wm": {"amp": 1e-3, "decay": 1e-3},
    "ia": {"amp": 2e-3, "null": 1e-3, "decay": 1e-3},
    "sa": {"decay": 1e-3, "self": 2e-3},
    "aa": {"sparse": 1e-3, "amp": 2e-3},
    "kp": {"angle": 1.0, "decay": KP_DECAY},
}


@pytest.mark.parametrize("name", list(DEFAULT_WEIGHTS))
def test_default_weights(name):
    built = rule(name)
    assert built.name == name
    assert built.weights == DEFAULT_WEIGHTS[name]
    assert set(built.primitives) == set(DEFAULT_WEIGHTS[name])
    assert built.noise_std == 0.0 and built.noise_dist == "normal"
    assert built.align_forward_weight is False


def test_sa_weights_exactly():
    assert rule("sa").weights == {"decay": 1e-3, "self": 2e-3}


def test_kp_default_decay_matches_weight_decay_1e_4():
    # lambda_KP / (2 lr_B) with lambda_KP = lr * 1e-4: the B shrink per SGD step, 2 * decay * lr,
    # equals the W shrink of SGD(weight_decay=1e-4), lr * 1e-4
    assert pytest.approx(1e-4) == 2 * KP_DECAY


def test_backward_weight_flags():
    held = {n: (rule(n).has_backward_weight, rule(n).trains_backward_weight) for n in SPECS}
    assert held.pop("bp") == (False, True)
    assert held.pop("fa") == (True, False)
    assert set(held.values()) == {(True, True)}


def test_default_flags():
    assert rule("wm").flags == rule("ia").flags == Flags(**AKROUT_FLAGS)
    assert AKROUT_FLAGS == {"fo_bias": True, "fo_relu": True, "fo_bwmc": True, "bi_bwmc": True}
    assert rule("aa").flags == Flags(fo_bias=True, bo_bias=True)
    for name in ("bp", "fa", "sa", "kp"):
        assert rule(name).flags == Flags()


def test_uses_angle():
    assert rule("kp").uses_angle
    assert not rule("kp", weights={"angle": 0.0}).uses_angle
    assert not any(rule(n).uses_angle for n in ("bp", "fa", "wm", "ia", "sa", "aa"))


def test_registered_with_formula_descriptions():
    catalog = Registry(autoload=False).catalog("rules")
    assert {"bp", "fa", "wm", "ia", "sa", "aa", "kp"} <= set(catalog.names())
    assert catalog.get("sa") is SPECS["sa"]
    assert "R_l = 1e-3 decay + 2e-3 self" in catalog.entry("sa").description
    for name in ("wm", "ia", "aa", "kp"):
        assert "R_l = " in catalog.entry(name).description


# --- overrides -----------------------------------------------------------------------------
def test_weight_overrides_merge_into_defaults():
    assert rule("sa", weights={"decay": 0}).weights == {"decay": 0.0, "self": 2e-3}
    assert rule("wm", weights={"null": 5e-4}).weights == {"amp": 1e-3, "decay": 1e-3, "null": 5e-4}


def test_flag_overrides_merge_into_defaults():
    built = rule("wm", flags={"fo_relu": False, "bo_fwl2n": True})
    assert built.flags == Flags(fo_bias=True, fo_bwmc=True, bi_bwmc=True, bo_fwl2n=True)


def test_noise_and_forward_alignment_overrides():
    built = rule("ia", noise_std=0.8176, noise_dist="uniform", align_forward_weight=True)
    assert (built.noise_std, built.noise_dist, built.align_forward_weight) == (0.8176, "uniform", True)


def test_none_overrides_keep_the_defaults():
    built = rule(
        "wm", weights=None, flags=None, noise_std=None, noise_dist=None, schedules=None, align_forward_weight=None
    )
    assert built.weights == DEFAULT_WEIGHTS["wm"] and built.flags == Flags(**AKROUT_FLAGS)
    assert (built.noise_std, built.noise_dist, built.align_forward_weight) == (0.0, "normal", False)


def test_rule_from_any_primitives_without_a_class():
    built = build_rule(RuleSpec("custom"), TABLE, weights={"null": 1.0, "self": 2.0})
    assert built.weights == {"null": 1.0, "self": 2.0}
    assert built.primitives == {"null": TABLE["null"], "self": TABLE["self"]}


def test_spec_options_are_defaults_that_overrides_beat():
    spec = RuleSpec("noisy", weights={"amp": 1.0}, options={"noise_std": 0.5, "flags": {"bo_relu": True}})
    assert build_rule(spec, TABLE).noise_std == 0.5
    built = build_rule(spec, TABLE, noise_std=0.0, flags={"fo_relu": True})
    assert built.noise_std == 0.0 and built.flags == Flags(bo_relu=True, fo_relu=True)


def test_primitives_may_come_from_the_registry_catalog():
    catalog = Registry(autoload=False).catalog("primitives")
    assert build_rule(SPECS["sa"], catalog).primitives == {"decay": TABLE["decay"], "self": TABLE["self"]}


@pytest.mark.parametrize(
    "name, overrides, pattern",
    [
        ("sa", {"weight": {"decay": 1}}, r"'weight'.*weights, flags, noise_std"),
        ("sa", {"weights": {"decy": 1}}, r"primitive 'decy'.*amp, angle, decay"),
        ("wm", {"flags": {"fo_rely": True}}, r"flag 'fo_rely'.*fo_bias, fo_relu"),
        ("wm", {"noise_dist": "gaussian"}, r"'gaussian'.*normal, uniform"),
        ("wm", {"noise_std": -1.0}, r"noise_std"),
        ("sa", {"schedules": {"amp": "constant"}}, r"'amp'.*decay, self"),
        ("fa", {"weights": {"decay": 1e-3}}, r"'fa' does not train"),
        ("bp", {"weights": {"amp": 1.0}}, r"'bp' does not train"),
        ("sa", {"schedules": {"self": {"kind": "window", "begin": 1}}}, r"'begin'.*start, end"),
    ],
)
def test_bad_overrides_are_user_errors_naming_the_key(name, overrides, pattern):
    with pytest.raises(UserError, match=pattern):
        rule(name, **overrides)


def test_fa_accepts_zero_weights():
    assert rule("fa", weights={"decay": 0.0}).weights == {"decay": 0.0}


# --- coefficients and schedules ------------------------------------------------------------
def test_coefficient_is_weight_times_schedule():
    built = rule(
        "ia",
        schedules={
            "amp": {"kind": "window", "start": 1, "end": 3},
            "null": {"kind": "linear", "start": 0, "end": 4, "from_value": 0.0, "to_value": 2.0},
        },
    )
    assert built.coefficient("amp", 0.5) == 0.0
    assert built.coefficient("amp", 2.0) == 2e-3
    assert built.coefficient("null", 1.0) == pytest.approx(1e-3 * 0.5)
    assert built.coefficient("decay", 123.0) == 1e-3  # no schedule: constant
    assert built.coefficient("angle", 1.0) == 0.0  # not weighed by ia


# --- the regularizer -----------------------------------------------------------------------
def test_sa_regularizer_closed_form():
    layer = forwarded(rule("sa"))
    W, B = layer.weight.detach(), layer.backward_weight.detach()
    torch.testing.assert_close(layer.rule.regularizer(layer), 1e-3 * sq(W - B))


def test_regularizer_is_the_weighted_sum_of_primitive_values():
    built = rule("ia")
    layer = forwarded(built)
    ctx = AlignmentContext(layer, built)
    x, W, B = layer.last_input, layer.weight.detach(), layer.backward_weight.detach()
    x_b = x - x.mean(0)
    fp = torch.relu(x @ W.T + layer.bias.detach())
    fr = fp @ B
    fp, fr = fp - fp.mean(0), fr - fr.mean(0)
    bp = x_b @ B.T
    expected = 2e-3 * -(fp * bp).sum() / 5 + 1e-3 * sq(fr) / 5 + 1e-3 * (sq(W) + sq(B))
    torch.testing.assert_close(built.regularizer(layer), expected)
    torch.testing.assert_close(ctx.fr, fr)  # the reference above is the pass the rule sees


def test_kp_regularizer_leaves_angle_to_the_op():
    built = rule("kp")
    layer = forwarded(built)
    layer(layer.last_input).pow(2).sum().backward()  # G is now there
    W, B = layer.weight.detach(), layer.backward_weight.detach()
    torch.testing.assert_close(built.regularizer(layer), KP_DECAY * (sq(W) + sq(B)))


def test_regularizer_follows_the_epoch():
    built = rule("sa", schedules={"self": {"kind": "window", "start": 2}})
    layer = forwarded(built)
    W, B = layer.weight.detach(), layer.backward_weight.detach()
    decay_only = 1e-3 * (sq(W) + sq(B))
    torch.testing.assert_close(built.regularizer(layer), decay_only)  # layer.epoch is 0
    torch.testing.assert_close(built.regularizer(layer, 2.5), 1e-3 * sq(W - B))
    layer.epoch = 2.0
    torch.testing.assert_close(built.regularizer(layer), 1e-3 * sq(W - B))


@pytest.mark.parametrize("name", ["bp", "fa"])
def test_regularizer_is_zero_without_trained_b(name):
    layer = forwarded(rule(name))
    value = layer.rule.regularizer(layer)
    assert value.dim() == 0 and value.item() == 0.0 and value.dtype == F64


def test_regularizer_is_zero_before_any_forward():
    built = rule("wm")
    layer = AlignedLinear(4, 3, rule=built)
    assert built.regularizer(layer).item() == 0.0


# --- model-wide ----------------------------------------------------------------------------
def test_alignment_loss_sums_every_aligned_layer():
    sa, wm = rule("sa"), rule("wm")
    torch.manual_seed(0)
    model = nn.Sequential(
        AlignedConv2d(2, 3, 3, rule=sa, dtype=F64),
        nn.ReLU(),
        nn.Flatten(),
        AlignedLinear(12, 4, rule=wm, dtype=F64),
        nn.Sequential(AlignedLinear(4, 2, rule=sa, dtype=F64)),
        AlignedLinear(2, 2, rule=rule("bp"), dtype=F64),
    )
    model(torch.randn(5, 2, 4, 4, dtype=F64))
    conv, dense, inner = model[0], model[3], model[4][0]
    expected = sum(1e-3 * sq(m.weight - m.backward_weight) for m in (conv, inner)) + wm.regularizer(dense)
    torch.testing.assert_close(alignment_loss(model), expected)


@pytest.mark.parametrize("name", ["wm", "ia", "sa", "aa", "kp"])
def test_weight_terms_in_closed_form_give_the_gradients_of_the_whole_loss(name):
    """alignment_loss(weight_terms=False) through autograd plus add_weight_gradients (the trainer's
    step) give W and B the gradients autograd gives for the whole alignment_loss, on a conv and a
    dense layer, with scale 3; kp's angle part is the op's (the task loss here), the same on both, and
    the same again when it comes after the backward (``deliver_angle_after_backward``, ``add_angle_gradients``)."""
    built = rule(name, align_forward_weight=name == "wm")

    def gradients(closed_form, angle_after=False):
        torch.manual_seed(0)
        model = nn.Sequential(
            AlignedConv2d(2, 3, 3, rule=built, dtype=F64),
            nn.ReLU(),
            nn.Flatten(),
            AlignedLinear(12, 4, rule=built, dtype=F64),
        )
        moved = deliver_angle_after_backward(model) if angle_after else []
        assert len(moved) == (2 if angle_after and name == "kp" else 0)
        set_epoch(model, 0.5, angle_factor=0.7)
        task = model(torch.randn(5, 2, 4, 4, dtype=F64)).pow(2).sum()
        (task + 3 * alignment_loss(model, weight_terms=not closed_form)).backward()
        if angle_after:
            assert all(layer.backward_weight.grad is None for layer in moved)  # the op handed B nothing
            add_angle_gradients(model)
        if closed_form:
            add_weight_gradients(model, 3.0)
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    closed, graph, after = gradients(True), gradients(False), gradients(True, angle_after=True)
    assert closed.keys() == graph.keys() == after.keys() and any("backward_weight" in n for n in closed)
    for n in graph:
        torch.testing.assert_close(closed[n], graph[n], rtol=1e-10, atol=1e-12, msg=n)
        torch.testing.assert_close(after[n], graph[n], rtol=1e-10, atol=1e-12, msg=n)


def test_gradient_multiples_name_the_tensor_each_b_gradient_is_a_multiple_of():
    """sa: (scale wb, [(B, W)]); kp with its angle after the backward: (angle_scale, [(B, W.grad)]);
    None for kp with the op's angle (B.grad is set), for a rule with other terms (wm) and for a mix."""
    torch.manual_seed(0)

    def stepped(*names, after=True):
        model = nn.Sequential(*(AlignedLinear(3, 3, rule=rule(n), dtype=F64) for n in names))
        if after:
            deliver_angle_after_backward(model)
        set_epoch(model, 0.0, angle_factor=0.5)
        model(torch.randn(4, 3, dtype=F64)).pow(2).sum().backward()
        return model

    sa = stepped("sa", "sa")
    factor, pairs = gradient_multiples(sa, 3.0)
    assert factor == pytest.approx(3.0 * -2e-3)
    assert all(B is layer.backward_weight for layer, (B, _) in zip(sa, pairs, strict=True))
    assert all(torch.equal(K, layer.weight) for layer, (_, K) in zip(sa, pairs, strict=True))
    kp = stepped("kp", "kp")
    factor, pairs = gradient_multiples(kp, 3.0)
    assert factor == 0.5 and all(K is layer.weight.grad for layer, (_, K) in zip(kp, pairs, strict=True))
    assert gradient_multiples(stepped("kp", after=False), 3.0) is None
    assert gradient_multiples(stepped("wm"), 3.0) is None
    assert gradient_multiples(stepped("sa", "kp"), 3.0) is None


def test_backward_decay_is_the_shared_coefficient_of_B_or_none():
    """2 bb of every trained B with a forward: sa's 2e-3; None once a layer has another (aa's 0) or
    before any forward; fa's untrained B does not count."""
    torch.manual_seed(0)

    def model(*rules):
        return nn.Sequential(*(AlignedLinear(3, 3, rule=rule(name), dtype=F64) for name in rules))

    net = model("sa", "sa", "fa")
    assert backward_decay(net) is None  # no forward yet
    net(torch.randn(2, 3, dtype=F64))
    assert backward_decay(net) == pytest.approx(2e-3)
    mixed = model("sa", "aa")
    mixed(torch.randn(2, 3, dtype=F64))
    assert backward_decay(mixed) is None


def test_alignment_loss_without_aligned_layers_is_zero():
    loss = alignment_loss(nn.Sequential(nn.Linear(2, 2, dtype=F64)))
    assert loss.dim() == 0 and loss.item() == 0.0 and loss.dtype == F64
    assert alignment_loss(nn.ReLU()).item() == 0.0


def test_set_epoch_fills_angle_scale_in_place():
    kp = rule("kp", schedules={"angle": {"kind": "window", "start": 2}})
    model = nn.Sequential(AlignedLinear(3, 3, rule=kp), AlignedLinear(3, 3, rule=rule("sa")))
    buffers = [m.angle_scale for m in model]
    pointers = [b.data_ptr() for b in buffers]
    set_epoch(model, 1.0)
    assert [m.angle_scale.item() for m in model] == [0.0, 0.0]
    set_epoch(model, 2.5, angle_factor=0.5)
    assert [m.angle_scale.item() for m in model] == [0.5, 0.0]
    assert [m.epoch for m in model] == [2.5, 2.5]
    assert all(m.angle_scale is b for m, b in zip(model, buffers, strict=True))
    assert [b.data_ptr() for b in buffers] == pointers


def test_flag_names():
    assert FLAG_NAMES == (
        "fo_bias",
        "fo_relu",
        "fo_fwmc",
        "fo_fwl2n",
        "fo_bwmc",
        "bo_bias",
        "bo_relu",
        "bo_fwmc",
        "bo_fwl2n",
        "bi_bwmc",
        "bi_fwmc",
        "bi_fwl2n",
    )


def test_backward_gradient_in_graph_counts_the_angle_only_where_the_op_delivers_it():
    """sa's B takes no gradient in the backward, wm's does (amp); kp's through the op's angle update,
    none once its layer leaves that update to the trainer (``angle_in_backward`` False)."""
    assert not rule("sa").backward_gradient_in_graph() and rule("wm").backward_gradient_in_graph()
    assert rule("kp").backward_gradient_in_graph() and not rule("kp").backward_gradient_in_graph(angle=False)
    layer = AlignedLinear(3, 3, rule=rule("kp"))
    assert layer.backward_gradient_in_graph
    assert deliver_angle_after_backward(nn.Sequential(layer)) == [layer]
    assert not layer.backward_gradient_in_graph


def test_angle_after_backward_leaves_out_a_shared_or_frozen_w():
    """Two layers on one W (B would take the sum of both dW from W.grad) and a frozen W (no W.grad)
    keep the op's angle update."""
    first, second, frozen = (AlignedLinear(3, 3, rule=rule("kp")) for _ in range(3))
    second.weight = first.weight
    frozen.weight.requires_grad_(False)
    assert deliver_angle_after_backward(nn.Sequential(first, second, frozen)) == []
    assert first.angle_in_backward and second.angle_in_backward and frozen.angle_in_backward
