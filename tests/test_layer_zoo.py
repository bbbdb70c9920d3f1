"""Every rule on a model of every new layer kind (Conv1d, ConvTranspose1d, MultiheadAttention,
Conv3d, ConvTranspose3d, Linear), converted by ``convert`` without a warning: the task and
alignment backward reaches every trained B; with every B tied to W the gradient angles are 0
at every aligned layer (the attention's in_proj too) and nonzero with random B; layer_metrics
and weight snapshots cover every layer; the sign-symmetry and direct-feedback plugins run on
it (their B and input gradients as their definitions say)."""

from __future__ import annotations

import warnings

import neural_alignment_direct_feedback as direct_feedback
import neural_alignment_sign_symmetry as sign_symmetry
import pytest
import torch
from torch import nn

import neural_alignment as na
from neural_alignment.core.context import AlignmentContext
from neural_alignment.core.layers import aligned_layers
from neural_alignment.registry import Registry
from neural_alignment.runtime.snapshots import load_snapshot, sample_indices, save_snapshot

F64 = torch.float64
LAYERS = ["c1", "t1", "attn.in_proj", "attn.out_proj", "c3", "t3", "head"]


class Zoo(nn.Module):
    """A 1-d branch (conv, transposed conv, self-attention with a residual) and a 3-d branch
    (conv, transposed conv), joined by a Linear head."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv1d(2, 4, 3, padding="same", padding_mode="reflect")
        self.t1 = nn.ConvTranspose1d(4, 4, 2, stride=2)
        self.attn = nn.MultiheadAttention(4, 2, batch_first=True)
        self.c3 = nn.Conv3d(1, 2, 2)
        self.t3 = nn.ConvTranspose3d(2, 1, 2)
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4 * 54 + 27, 3)

    def forward(self, x):
        z = x[:, :1].reshape(-1, 1, 3, 3, 3)
        h = torch.relu(self.t1(torch.relu(self.c1(x)))).transpose(1, 2)
        n = self.norm(h)
        h = h + self.attn(n, n, n, need_weights=False)[0]
        g = torch.relu(self.t3(torch.relu(self.c3(z))))
        return self.head(torch.cat([h.flatten(1), g.flatten(1)], 1))


def batch():
    torch.manual_seed(0)
    return torch.randn(5, 2, 27, dtype=F64), torch.randint(0, 3, (5,))


WITH_EXAMPLE_PLUGINS = Registry(autoload=False, extra_plugins=[sign_symmetry, direct_feedback])
"""The built-in rules and the example plugins' (sign symmetry, DFA), on every machine: not only
where the plugins happen to be installed."""
EVERY_RULE = WITH_EXAMPLE_PLUGINS.catalog("rules").names()


def rule_named(name: str):
    """The rule ``name`` from :data:`WITH_EXAMPLE_PLUGINS`."""
    return na.get_rule(name, registry=WITH_EXAMPLE_PLUGINS)


def zoo(rule) -> nn.Module:
    torch.manual_seed(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a model of known layers converts without a warning
        model = na.convert(Zoo().double(), rule=rule)
    assert [name for name, _ in aligned_layers(model)] == LAYERS
    return model


@pytest.mark.parametrize("rule", EVERY_RULE)
def test_every_rule_trains_every_backward_kernel_and_measures_every_layer(rule, tmp_path):
    model = zoo(rule_named(rule))
    inputs, targets = batch()
    loss = nn.functional.cross_entropy(model(inputs), targets)
    (loss + na.alignment_loss(model)).backward()
    for name, layer in aligned_layers(model):
        B = layer.backward_weight
        if B is not None and B.requires_grad:
            assert B.grad is not None and torch.isfinite(B.grad).all() and B.grad.abs().sum() > 0, name
    assert sorted(na.layer_metrics(model)) == sorted(LAYERS)
    angles = na.gradient_angle(model, (inputs, targets), nn.functional.cross_entropy)
    assert sorted(angles) == sorted(LAYERS)
    if rule != "bp":
        assert angles["c1"] > 1.0  # random B: the propagated gradient is not backprop's
    # B := W gives backprop unless a feedback path (sign symmetry, DFA) replaces B or dx itself
    if rule != "bp" and rule_named(rule).feedback is None:
        with torch.no_grad():
            for _, layer in aligned_layers(model):
                layer.backward_weight.copy_(layer.weight)
        tied = na.gradient_angle(model, (inputs, targets), nn.functional.cross_entropy)
        assert max(tied.values()) < 1e-5, tied  # B == W everywhere: backprop at every layer
    path = save_snapshot(tmp_path, 0, model, sample_indices(model, seed=0, limit=5))
    assert path.is_file() and sorted(load_snapshot(tmp_path, 0)) == sorted(LAYERS)


def test_sign_symmetry_sets_every_B_of_the_new_layers_from_W():
    model = zoo(rule_named("usf"))
    inputs, targets = batch()
    nn.functional.cross_entropy(model(inputs), targets).backward()
    for name, layer in aligned_layers(model):
        W, B = layer.weight.detach(), layer.backward_weight.detach()
        expected = W.norm() * W.sign() / W.sign().norm()  # usf: B = ||W|| sign(W) / ||sign(W)||
        torch.testing.assert_close(B, expected, msg=name)


def test_direct_feedback_sends_the_output_error_to_every_new_layer():
    model = zoo(rule_named("dfa"))
    inputs, targets = batch()
    x = inputs.requires_grad_()
    logits = model(x)
    e = torch.softmax(logits, 1) - nn.functional.one_hot(targets, 3)  # d(sum of losses)/d logits
    nn.functional.cross_entropy(logits, targets, reduction="sum").backward()
    # x feeds c1 (reflect-padded: its op input gets e D_c1) and c3 (its first channel: e D_c3);
    # x's gradient is those through the padding and the reshape
    x_ref = x.detach().requires_grad_()
    padded = nn.functional.pad(x_ref, model.c1._explicit_pad, mode="reflect")
    into_c3 = x_ref[:, :1].reshape(-1, 1, 3, 3, 3)
    expected = torch.autograd.grad(
        (padded, into_c3),
        x_ref,
        (
            (e @ model.c1.direct_feedback_matrix).reshape(padded.shape),
            (e @ model.c3.direct_feedback_matrix).reshape(into_c3.shape),
        ),
    )[0]
    torch.testing.assert_close(x.grad, expected)
    for name, layer in aligned_layers(model):
        assert hasattr(layer, "direct_feedback_matrix"), name  # every layer got its error from e


def test_each_layers_kernel_gradient_is_autograds_through_its_project():
    """kernel_gradient(x, dy, B) = d<dy, project(x, K)>/dK: each layer's kernel product alone
    (padding mode, stride, transposed, the attention's packed projection) against autograd."""
    model = zoo("wm")
    model(batch()[0])
    for name, layer in aligned_layers(model):
        x, B = layer.last_input, layer.backward_weight.detach()
        leaf = B.clone().requires_grad_()
        y = layer.project(x, leaf)
        dy = torch.randn_like(y)
        (expected,) = torch.autograd.grad(y, leaf, dy)
        torch.testing.assert_close(layer.kernel_gradient(x, dy, B), expected, msg=name)


@pytest.mark.parametrize("rule", ["wm", "ia"])
def test_amp_through_the_kernel_product_equals_amp_of_the_formed_bp_on_every_layer(rule):
    """wm's and ia's amp = -sum mean(fp * bp), bp = project(x - batch mean x, B) formed here by hand
    (Akrout's flags: fp = relu(the layer's output) centred over the batch): the same value and dB,
    while the pass itself never formed bp."""
    model = zoo(rule)
    model(batch()[0])
    amp = na.get_rule(rule).primitives["amp"]
    for name, layer in aligned_layers(model):
        ctx = AlignmentContext(layer, layer.rule)
        assert ctx.bp_by_kernel_product, name
        value = amp(ctx)
        (dB,) = torch.autograd.grad(value, layer.backward_weight)
        assert "bp" not in ctx.__dict__ and "_bp" not in ctx.__dict__, name
        x = layer.last_input
        fp = torch.relu(layer.project(x, layer.weight.detach(), layer.bias.detach()))
        fp = fp - fp.mean(0)
        bp = layer.project(x - x.mean(0), layer.backward_weight)
        expected = -(fp * bp).sum() / len(x)
        (expected_dB,) = torch.autograd.grad(expected, layer.backward_weight)
        torch.testing.assert_close(value, expected, msg=name)
        torch.testing.assert_close(dB, expected_dB, msg=name)


@pytest.mark.parametrize("rule", EVERY_RULE)
def test_every_rule_steps_under_bfloat16_autocast_on_every_layer_kind(rule):
    """Under CPU autocast the pass's products see the dtypes autocast gives F.conv/F.linear (its
    torch.convolution calls cast as F.conv would): the step runs and every trained B gets a finite
    float32 gradient; wm's and ia's amp through the kernel product is close to float32's."""
    model = zoo(rule_named(rule)).float()
    inputs, targets = batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(inputs.float())
        loss = nn.functional.cross_entropy(logits.float(), targets) + na.alignment_loss(model)
    loss.backward()
    for name, layer in aligned_layers(model):
        B = layer.backward_weight
        if B is not None and B.requires_grad:
            assert B.grad.dtype == torch.float32 and torch.isfinite(B.grad).all(), name
    if rule in ("wm", "ia"):
        amp, layer = rule_named(rule).primitives["amp"], model.c1
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(inputs.float())
            low = amp(AlignmentContext(layer, layer.rule))
        model(inputs.float())
        full = amp(AlignmentContext(layer, layer.rule))
        torch.testing.assert_close(low, full, rtol=0.05, atol=1e-3)
