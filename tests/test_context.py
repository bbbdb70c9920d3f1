"""The alignment pass: each layer-wise flag changes exactly the fields docs/design.md says, input
noise replaces x, fields are lazy (SA and KP never project), and fp reuses the layer's output.

The reference pass below is written in numpy from docs/design.md's steps, independently of
core/context.py.
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from neural_alignment.core.context import AlignmentContext, centred
from neural_alignment.core.layers import AlignedConv1d, AlignedConv2d, AlignedConvTranspose2d, AlignedLinear
from neural_alignment.core.rules import FLAG_NAMES, RuleSpec, build_rule
from neural_alignment.plugins.primitives import BUILTIN_PRIMITIVES, Amp
from neural_alignment.plugins.rules import BUILTIN_RULES

TABLE = {p.name: p for p in BUILTIN_PRIMITIVES}
SPECS = {s.name: s for s in BUILTIN_RULES}
F64 = torch.float64
FIELDS = ("x", "x_b", "fp", "bp", "fr", "br")


def rule_with(weights=None, **options):
    return build_rule(RuleSpec("probe"), TABLE, weights=weights or {}, **options)


def dense_layer(rule, bias=True, seed=0):
    """A dense float64 layer after a forward on inputs with nonzero per-example and batch means."""
    torch.manual_seed(seed)
    layer = AlignedLinear(6, 5, bias=bias, rule=rule, dtype=F64)
    if bias:
        with torch.no_grad():
            layer.bias.add_(0.5)
    x = torch.randn(7, 6, dtype=F64) + torch.linspace(-1, 2, 6, dtype=F64)
    layer(x)
    return layer


# --- the reference pass, numpy -------------------------------------------------------------
def centre_features(a):
    flat = a.reshape(len(a), -1)
    return (flat - flat.mean(axis=1, keepdims=True)).reshape(a.shape)


def l2n_features(a):
    flat = centre_features(a).reshape(len(a), -1)
    return (flat / np.linalg.norm(flat, axis=1, keepdims=True)).reshape(a.shape)


def centre_batch(a):
    return a - a.mean(axis=0, keepdims=True)


def reference_pass(layer, flags, x=None):
    """docs/design.md's steps 2-7 for a dense layer, in numpy (x defaults to the layer's input)."""
    on = lambda name: flags.get(name, False)  # noqa: E731
    x = (layer.last_input if x is None else x).numpy().copy()
    W = layer.weight.detach().numpy()
    B = layer.backward_weight.detach().numpy()
    b = layer.bias.detach().numpy() if layer.bias is not None else 0.0
    if on("bi_fwmc"):
        x = centre_features(x)
    if on("bi_fwl2n"):
        x = l2n_features(x)
    x_b = centre_batch(x) if on("bi_bwmc") else x
    fp = x @ W.T + (b if on("fo_bias") else 0.0)
    bp = x_b @ B.T + (b if on("bo_bias") else 0.0)
    fp = np.maximum(fp, 0.0) if on("fo_relu") else fp
    bp = np.maximum(bp, 0.0) if on("bo_relu") else bp
    fr, br = fp @ B, bp @ W
    for flag, op in (("fo_fwmc", centre_features), ("fo_fwl2n", l2n_features), ("fo_bwmc", centre_batch)):
        if on(flag):
            fp, fr = op(fp), op(fr)
    for flag, op in (("bo_fwmc", centre_features), ("bo_fwl2n", l2n_features)):
        if on(flag):
            bp, br = op(bp), op(br)
    return {"x": x, "x_b": x_b, "fp": fp, "bp": bp, "fr": fr, "br": br}


def fields_of(ctx):
    return {name: getattr(ctx, name).detach().numpy() for name in FIELDS}


def context_fields(layer, rule):
    return fields_of(AlignmentContext(layer, rule))


def assert_fields_match(ours, ref):
    for name in FIELDS:
        np.testing.assert_allclose(ours[name], ref[name], rtol=1e-10, atol=1e-12, err_msg=name)


# --- flags ---------------------------------------------------------------------------------
CHANGES = {
    "fo_bias": {"fp", "fr"},
    "fo_relu": {"fp", "fr"},
    "fo_fwmc": {"fp", "fr"},
    "fo_fwl2n": {"fp", "fr"},
    "fo_bwmc": {"fp", "fr"},
    "bo_bias": {"bp", "br"},
    "bo_relu": {"bp", "br"},
    "bo_fwmc": {"bp", "br"},
    "bo_fwl2n": {"bp", "br"},
    "bi_bwmc": {"x_b", "bp", "br"},
    "bi_fwmc": set(FIELDS),
    "bi_fwl2n": set(FIELDS),
}


def test_every_flag_is_covered():
    assert set(CHANGES) == set(FLAG_NAMES)


@pytest.mark.parametrize("flag", FLAG_NAMES)
def test_each_flag_changes_exactly_its_fields(flag):
    baseline_rule = rule_with()
    layer = dense_layer(baseline_rule)
    baseline = context_fields(layer, baseline_rule)
    assert_fields_match(baseline, reference_pass(layer, {}))
    flagged = context_fields(layer, rule_with(flags={flag: True}))
    assert_fields_match(flagged, reference_pass(layer, {flag: True}))
    changed = {name for name in FIELDS if not np.allclose(flagged[name], baseline[name], rtol=1e-12, atol=1e-12)}
    assert changed == CHANGES[flag]


COMBINATIONS = {
    "wm+ad+ops (table 5)": dict(
        fo_bias=True, fo_relu=True, fo_bwmc=True, fo_fwmc=True, bo_relu=True, bo_fwl2n=True, bi_bwmc=True
    ),
    "ia (table 5)": dict(
        fo_bias=True, fo_relu=True, fo_bwmc=True, fo_fwmc=True, bo_bias=True, bo_fwmc=True, bo_fwl2n=True
    ),
    "fo order: fwl2n then bwmc": dict(fo_fwl2n=True, fo_bwmc=True),
    "all": {name: True for name in FLAG_NAMES},
}


@pytest.mark.parametrize("flags", COMBINATIONS.values(), ids=list(COMBINATIONS))
def test_flag_combinations_apply_in_design_order(flags):
    rule = rule_with(flags=flags)
    layer = dense_layer(rule)
    assert_fields_match(context_fields(layer, rule), reference_pass(layer, flags))


def test_output_operations_do_not_commute():
    """The combination test above can fail: FO BWMC after FO FWL2N differs from before it."""
    layer = dense_layer(rule_with())
    fp = layer.last_output.numpy()
    assert not np.allclose(centre_batch(l2n_features(fp)), l2n_features(centre_batch(fp)))


def test_conv_features_are_all_non_batch_axes():
    flags = {"bi_fwl2n": True, "fo_fwmc": True, "bo_fwl2n": True}
    rule = rule_with(flags=flags)
    torch.manual_seed(0)
    layer = AlignedConv2d(3, 4, 3, stride=2, padding=1, rule=rule, dtype=F64)
    x = torch.randn(2, 3, 7, 7, dtype=F64) + 1.0
    layer(x)
    ctx = AlignmentContext(layer, rule)
    xn = l2n_features(x.numpy())
    np.testing.assert_allclose(ctx.x.numpy(), xn, rtol=1e-10, atol=1e-12)
    assert np.allclose(np.linalg.norm(xn.reshape(2, -1), axis=1), 1.0)
    conv = lambda inp, k: F.conv2d(torch.from_numpy(inp), k.detach(), None, 2, 1).numpy()  # noqa: E731
    np.testing.assert_allclose(ctx.fp.detach().numpy(), centre_features(conv(xn, layer.weight)), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(
        ctx.bp.detach().numpy(), l2n_features(conv(xn, layer.backward_weight)), rtol=1e-10, atol=1e-12
    )
    assert ctx.fr.shape == ctx.br.shape == x.shape


# --- input noise ---------------------------------------------------------------------------
@pytest.mark.parametrize("dist", ["normal", "uniform"])
def test_noise_replaces_the_input(dist):
    rule = rule_with(noise_std=0.5, noise_dist=dist)
    layer = AlignedLinear(200, 3, rule=rule, dtype=F64)
    layer(torch.full((100, 200), 1e3, dtype=F64))  # an input noise must not keep
    torch.manual_seed(3)
    ctx = AlignmentContext(layer, rule)
    x = ctx.x
    assert x.shape == (100, 200)
    assert abs(x.mean().item()) < 0.01
    assert x.std().item() == pytest.approx(0.5, rel=0.02)
    if dist == "uniform":
        assert x.abs().max().item() <= math.sqrt(3) * 0.5
        assert x.abs().max().item() > 0.95 * math.sqrt(3) * 0.5
    else:
        assert x.abs().max().item() > 3 * 0.5  # a normal's tails, which the uniform lacks
    # every field comes from the noise
    assert_fields_match(fields_of(ctx), reference_pass(layer, {}, x=x))


def test_noise_then_input_ops():
    rule = rule_with(noise_std=2.0, flags={"bi_fwmc": True})
    layer = dense_layer(rule)
    ctx = AlignmentContext(layer, rule)
    np.testing.assert_allclose(ctx.x.numpy().mean(axis=1), 0.0, atol=1e-12)
    assert ctx.x.std().item() > 0.5  # noise, centred: not the layer's input centred
    assert not np.allclose(ctx.x.numpy(), centre_features(layer.last_input.numpy()))


# --- laziness and reuse --------------------------------------------------------------------
def spy(monkeypatch, layer):
    """Count calls of the layer's real project/reconstruct/kernel_gradient."""
    calls = {"project": 0, "reconstruct": 0, "kernel_gradient": 0}
    for name in calls:
        real = getattr(layer, name)

        def counting(*args, _real=real, _name=name, **kwargs):
            calls[_name] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(layer, name, counting)
    return calls


@pytest.mark.parametrize("name", ["sa", "kp"])
@pytest.mark.parametrize("make", [dense_layer, None], ids=["dense", "conv"])
def test_weight_rules_never_project(monkeypatch, name, make):
    rule = build_rule(SPECS[name], TABLE, flags={"fo_relu": True, "bi_fwmc": True}, noise_std=1.0)
    if make is None:
        layer = AlignedConv2d(2, 3, 3, rule=rule, dtype=F64)
        layer(torch.randn(2, 2, 5, 5, dtype=F64)).sum().backward()
    else:
        layer = make(rule)
        layer.weight.grad = torch.ones_like(layer.weight)
    calls = spy(monkeypatch, layer)
    rule.regularizer(layer).backward()
    assert calls == {"project": 0, "reconstruct": 0, "kernel_gradient": 0}
    assert layer.backward_weight.grad is not None


def test_fields_are_computed_once(monkeypatch):
    rule = rule_with(flags={"bo_relu": True})
    layer = dense_layer(rule)
    calls = spy(monkeypatch, layer)
    ctx = AlignmentContext(layer, rule)
    _ = ctx.bp, ctx.bp, ctx.br, ctx.br  # each field read twice
    assert calls == {"project": 1, "reconstruct": 1, "kernel_gradient": 0}


@pytest.mark.parametrize(
    "options, bias, reused",
    [
        ({"flags": {"fo_bias": True}}, True, True),
        ({}, False, True),
        ({"flags": {"fo_bias": True}}, False, True),  # no bias to add either way
        ({"flags": {"bi_bwmc": True, "fo_bias": True}}, True, True),  # x_b only
        ({}, True, False),  # the layer added a bias the flag leaves out
        ({"flags": {"fo_bias": True}, "noise_std": 0.1}, True, False),
        ({"flags": {"fo_bias": True, "bi_fwmc": True}}, True, False),
        ({"flags": {"fo_bias": True, "bi_fwl2n": True}}, True, False),
        ({"flags": {"fo_bias": True}, "align_forward_weight": True}, True, False),
    ],
)
def test_fp_reuses_the_layer_output_when_nothing_changed(monkeypatch, options, bias, reused):
    rule = rule_with(**options)
    layer = dense_layer(rule, bias=bias)
    calls = spy(monkeypatch, layer)
    ctx = AlignmentContext(layer, rule)
    fp = ctx.fp
    assert (fp is layer.last_output) == reused
    assert calls["project"] == (0 if reused else 1)
    flags = options.get("flags", {})
    expected = reference_pass(layer, flags, x=ctx.x)["fp"]
    np.testing.assert_allclose(fp.detach().numpy(), expected, rtol=1e-10, atol=1e-12)


def test_wm_regularizer_runs_one_kernel_product_and_no_projection(monkeypatch):
    """wm reads bp only through amp's sum fp*bp, and fp is the layer's output: <K, B> with K the
    kernel product of (x_b, fp) (the value and dB checked on every layer kind in test_layer_zoo)."""
    rule = build_rule(SPECS["wm"], TABLE)
    layer = dense_layer(rule)
    calls = spy(monkeypatch, layer)
    rule.regularizer(layer)
    assert calls == {"project": 0, "reconstruct": 0, "kernel_gradient": 1}


@pytest.mark.parametrize(
    "options",
    [
        {"flags": {"bo_relu": True}},  # bp not linear in B
        {"flags": {"bo_fwl2n": True}},
        {"flags": {"bo_bias": True}},  # the layer's bias added to bp
        {"weights": {"amp": 1.0, "sparse": 1.0}},  # a second reader of bp
        {"align_forward_weight": True},  # fp depends on W, which takes the gradient too
        {"amp": Amp("fr", "bp")},  # fr depends on B (a square layer: fr is shaped like bp)
    ],
    ids=["bo_relu", "bo_fwl2n", "bo_bias", "sparse", "align_w", "amp_fr"],
)
def test_amp_forms_bp_where_the_kernel_product_would_not_give_it(monkeypatch, options):
    table = {**TABLE, "amp": options.pop("amp", TABLE["amp"])}
    rule = build_rule(RuleSpec("probe"), table, **{"weights": {"amp": 1.0}, **options})
    layer = dense_layer(rule)
    if rule.primitives["amp"].p == "fr":
        torch.manual_seed(0)
        layer = AlignedLinear(6, 6, rule=rule, dtype=F64)
        layer(torch.randn(7, 6, dtype=F64))
    ctx = AlignmentContext(layer, rule)
    assert not ctx.bp_by_kernel_product
    calls = spy(monkeypatch, layer)
    amp = rule.primitives["amp"]
    value = amp(ctx)
    assert calls["kernel_gradient"] == 0 and "bp" in ctx.__dict__
    torch.testing.assert_close(value, -(getattr(ctx, amp.p) * ctx.bp).sum() / 7)


# --- kernels and task gradient -------------------------------------------------------------
def test_w_is_detached_unless_the_rule_aligns_it():
    layer = dense_layer(rule_with())
    assert not AlignmentContext(layer, rule_with()).W.requires_grad
    aligning = rule_with(align_forward_weight=True)
    ctx = AlignmentContext(layer, aligning)
    assert ctx.W.requires_grad
    (grad,) = torch.autograd.grad(-(ctx.fp * ctx.bp).sum() / 7, layer.weight)
    x = layer.last_input
    torch.testing.assert_close(grad, -(x @ layer.backward_weight.detach().T).T @ x / 7)


def test_g_is_the_detached_task_gradient():
    layer = dense_layer(rule_with())
    assert AlignmentContext(layer, rule_with()).G is None
    layer(layer.last_input).pow(2).sum().backward()
    G = AlignmentContext(layer, rule_with()).G
    torch.testing.assert_close(G, layer.weight.grad)
    assert not G.requires_grad


@pytest.mark.parametrize("dim", [0, 1])
def test_centred_equals_autograd_of_the_plain_expression_to_second_order(dim):
    """centred(t, dim)'s value, gradient and (create_graph) second derivative equal autograd's of
    t - t.mean(dim, keepdim=True), float64, for an upstream gradient that is not centred."""
    torch.manual_seed(3)
    t = torch.randn(5, 4, 3, dtype=torch.float64, requires_grad=True)
    g = torch.randn(5, 4, 3, dtype=torch.float64)
    plain = t - t.mean(dim=dim, keepdim=True)
    torch.testing.assert_close(centred(t, dim), plain, rtol=0, atol=1e-15)
    (want,) = torch.autograd.grad((plain * g).sum(), t)
    (got,) = torch.autograd.grad((centred(t, dim) * g).sum(), t)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    assert torch.autograd.gradcheck(lambda u: centred(u, dim), (t,))
    assert torch.autograd.gradgradcheck(lambda u: centred(u, dim).pow(2), (t,))


# --- FO BWMC alone: fr reconstructs the centred fp ------------------------------------------
@pytest.mark.parametrize(
    "make, shape",
    [
        (lambda rule: AlignedLinear(6, 5, rule=rule, dtype=F64), (7, 3, 6)),  # a sequence: batch axis 0 only
        (lambda rule: AlignedConv1d(3, 4, 4, stride=2, padding=2, rule=rule, dtype=F64), (5, 3, 11)),
        (lambda rule: AlignedConv1d(3, 4, 4, padding="same", padding_mode="reflect", rule=rule, dtype=F64), (5, 3, 9)),
        (lambda rule: AlignedConvTranspose2d(3, 2, 3, stride=2, padding=1, rule=rule, dtype=F64), (4, 3, 5, 5)),
    ],
)
def test_fr_centred_before_the_reconstruction_equals_centred_after(make, shape):
    """fr = reconstruct(fp, B) with fp centred equals centre(reconstruct(relu(y), B)), value and dB
    (ddp's global batch mean: tests/test_ddp.py's two processes against one)."""
    rule = rule_with({"null": 1.0}, flags={"fo_bias": True, "fo_relu": True, "fo_bwmc": True, "bi_bwmc": True})
    torch.manual_seed(0)
    layer = make(rule)
    layer(torch.randn(*shape, dtype=F64) + 0.7)
    ctx = AlignmentContext(layer, rule)
    assert ctx.centring_commutes
    out = torch.relu(layer.last_output.detach())
    after = layer.reconstruct(out, layer.backward_weight, ctx.x)
    after = after - after.mean(0, keepdim=True)  # docs/design.md's order: reconstruct, then centre
    torch.testing.assert_close(ctx.fr, after, rtol=1e-12, atol=1e-12)
    (expected,) = torch.autograd.grad(after.pow(2).sum(), layer.backward_weight)
    (got,) = torch.autograd.grad(ctx.fr.pow(2).sum(), layer.backward_weight)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def test_with_feature_centring_too_fr_is_centred_after_the_reconstruction():
    """FO FWMC does not commute with the reconstruction: fr keeps docs/design.md's order."""
    rule = rule_with(flags={"fo_fwmc": True, "fo_bwmc": True})
    layer = dense_layer(rule)
    ctx = AlignmentContext(layer, rule)
    assert not ctx.centring_commutes
    assert_fields_match(fields_of(ctx), reference_pass(layer, {"fo_fwmc": True, "fo_bwmc": True}))
