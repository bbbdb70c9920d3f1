"""Each built-in primitive's value and gradient with respect to B equal a hand-written reference,
for a dense and a conv layer, in float64.

The references work on im2col matrices (``F.unfold``/``F.fold``), not on the layers' own
project/reconstruct: projection = Wm @ cols, reconstruction = fold(Bm^T @ fp), and the
gradients are the matrix calculus written out (no autograd in the references).
"""

import pytest
import torch
import torch.nn.functional as F

from neural_alignment.core.context import AlignmentContext
from neural_alignment.core.errors import UserError
from neural_alignment.core.layers import AlignedConv2d, AlignedLinear
from neural_alignment.core.primitives import NEEDS, add_quadratic_gradient, quadratic_form
from neural_alignment.core.rules import RuleSpec, build_rule
from neural_alignment.plugins.primitives import BUILTIN_PRIMITIVES, Amp, Null, Sparse

TABLE = {p.name: p for p in BUILTIN_PRIMITIVES}
F64 = torch.float64
CONV = dict(kernel_size=3, stride=2, padding=1, dilation=1)


def plain_rule():
    """Every primitive at weight 1, no flags, no noise."""
    return build_rule(RuleSpec("probe"), TABLE, weights={name: 1.0 for name in TABLE})


class Case:
    """A layer after one forward and one task backward (loss sum(y^2)), with im2col helpers."""

    def __init__(self, kind):
        torch.manual_seed(0)
        self.kind = kind
        if kind == "dense":
            self.layer = AlignedLinear(5, 4, rule=plain_rule(), dtype=F64)
            self.x = torch.randn(6, 5, dtype=F64) + 0.3
        else:
            self.layer = AlignedConv2d(3, 4, rule=plain_rule(), dtype=F64, **CONV)
            self.x = torch.randn(2, 3, 7, 7, dtype=F64) + 0.3
        self.layer(self.x).pow(2).sum().backward()
        self.W = self.layer.weight.detach().reshape(4, -1)
        self.B = self.layer.backward_weight.detach().reshape(4, -1)
        self.b = self.layer.bias.detach()
        self.N = self.x.shape[0]

    def cols(self, x):
        """(N, features, positions): unfold for a conv, a single position for a dense layer."""
        if self.kind == "dense":
            return x.unsqueeze(-1)
        return F.unfold(x, CONV["kernel_size"], CONV["dilation"], CONV["padding"], CONV["stride"])

    def uncols(self, c):
        """The adjoint of ``cols``: fold back to x's shape (sums overlapping patches)."""
        if self.kind == "dense":
            return c.squeeze(-1)
        return F.fold(c, self.x.shape[-2:], CONV["kernel_size"], CONV["dilation"], CONV["padding"], CONV["stride"])

    def outer(self, a, c):
        """sum_n a_n c_n^T for a (N, out, L) and c (N, features, L): a kernel-shaped gradient."""
        return torch.einsum("nol,nfl->of", a, c).reshape(self.layer.weight.shape)

    def reference(self):
        cols = self.cols(self.x)
        fp = self.W @ cols
        bp = self.B @ cols
        fr_cols = self.B.T @ fp
        fr = self.uncols(fr_cols)
        y = fp + self.b.view(1, -1, 1)
        G = self.outer(2 * y, cols)
        W, B, N = self.layer.weight.detach(), self.layer.backward_weight.detach(), self.N
        return {
            "decay": ((W**2).sum() + (B**2).sum(), 2 * B),
            "self": (-(W * B).sum(), -W),
            "amp": (-(fp * bp).sum() / N, -self.outer(fp, cols) / N),
            "sparse": (((fp**2).sum() + (bp**2).sum()) / N, 2 * self.outer(bp, cols) / N),
            "null": ((fr**2).sum() / N, self.outer(fp, self.cols(2 * fr)) / N),
            "angle": ((B * G).sum(), G),
        }


@pytest.fixture(scope="module", params=["dense", "conv"])
def case(request):
    return Case(request.param)


@pytest.mark.parametrize("name", list(TABLE))
def test_value_and_gradient_match_reference(case, name):
    value_ref, grad_ref = case.reference()[name]
    ctx = AlignmentContext(case.layer, case.layer.rule)
    value = TABLE[name](ctx)
    assert value.dim() == 0
    torch.testing.assert_close(value, value_ref, rtol=1e-10, atol=1e-12)
    (grad,) = torch.autograd.grad(value, case.layer.backward_weight)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-10, atol=1e-12)


def test_w_gets_no_alignment_gradient(case):
    ctx = AlignmentContext(case.layer, case.layer.rule)
    total = sum(p(ctx) for p in TABLE.values())
    assert torch.autograd.grad(total, case.layer.weight, allow_unused=True)[0] is None


def test_paired_primitives_read_the_chosen_fields(case):
    ctx = AlignmentContext(case.layer, case.layer.rule)
    x, fr, br = ctx.x, ctx.fr, ctx.br
    torch.testing.assert_close(Amp("x", "fr")(ctx), -(x * fr).sum() / case.N)
    torch.testing.assert_close(Sparse("br", None)(ctx), (br**2).sum() / case.N)
    torch.testing.assert_close(Null(None, "br")(ctx), (br**2).sum() / case.N)


def test_angle_is_zero_before_any_task_backward():
    layer = AlignedLinear(3, 2, rule=plain_rule(), dtype=F64)
    layer(torch.randn(4, 3, dtype=F64))
    assert TABLE["angle"](AlignmentContext(layer, layer.rule)).item() == 0.0


def test_needs_and_in_backward():
    assert TABLE["decay"].needs == TABLE["self"].needs == {"weights"}
    assert TABLE["amp"].needs == TABLE["sparse"].needs == {"projections"}
    assert TABLE["null"].needs == {"projections", "reconstructions"}
    assert TABLE["angle"].needs == {"weights", "task_gradient"}
    assert [n for n, p in TABLE.items() if p.in_backward] == ["angle"]
    assert Amp("x", "x_b").needs == frozenset()
    assert all(p.needs <= NEEDS for p in TABLE.values())


def test_docstrings_give_the_formula():
    for name, primitive in TABLE.items():
        assert type(primitive).__doc__.startswith(f"{name} = ")


@pytest.mark.parametrize("make", [lambda: Amp("fp", "nope"), lambda: Amp("fp", None), lambda: Sparse(None, None)])
def test_bad_fields_are_user_errors(make):
    with pytest.raises(UserError):
        make()


def test_registered_through_the_hook():
    from neural_alignment.registry import Registry

    catalog = Registry(autoload=False).catalog("primitives")
    assert {"decay", "self", "amp", "sparse", "null", "angle"} <= set(catalog.names())
    assert catalog.entry("amp").description == "amp = -sum mean(P*Q), default (P, Q) = (fp, bp)."


@pytest.mark.parametrize(
    "form",
    [(1e-3, 1e-3, -2e-3), (1e-4, 1e-4, -2e-4), (1.0, 1.0, 0.0), (0.0, 0.0, -1.0), (0.3, 2.0, 0.7), (0.5, 0.0, 0.25)],
    ids=["sa", "sa-small", "decay", "self", "general", "no-bb"],
)
def test_quadratic_form_value_and_closed_form_gradients_equal_autograd_of_the_expression(form):
    """quadratic_form's value and its closed-form dW, dB equal autograd's of ww|W|^2 + bb|B|^2 + wb<W,B>
    (float64, an upstream gradient of 3)."""
    ww, bb, wb = form
    torch.manual_seed(1)
    W = torch.randn(4, 3, 3, 3, dtype=F64, requires_grad=True)
    B = (W.detach() + 0.1 * torch.randn_like(W)).requires_grad_()
    expression = ww * (W * W).sum() + bb * (B * B).sum() + wb * (W * B).sum()
    expected = torch.autograd.grad(3 * expression, (W, B))
    value = quadratic_form(W, B, ww, bb, wb)
    torch.testing.assert_close(value, expression, rtol=1e-12, atol=1e-14)
    for got, want in zip(torch.autograd.grad(3 * value, (W, B)), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    (dB,) = torch.autograd.grad(quadratic_form(W.detach(), B, ww, bb, wb), B)  # W detached: B's alone
    torch.testing.assert_close(dB, 2 * bb * B.detach() + wb * W.detach(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(
    "form",
    [(1e-3, 1e-3, -2e-3), (1.0, 1.0, 0.0), (0.0, 0.0, -1.0), (0.3, 2.0, 0.7), (0.5, 0.0, 0.25)],
    ids=["sa", "decay", "self", "general", "no-bb"],
)
@pytest.mark.parametrize("with_w", [False, True], ids=["W-detached", "W-aligned"])
def test_add_quadratic_gradient_adds_autograds_gradient_of_the_form_in_place(form, with_w):
    """add_quadratic_gradient adds scale * autograd's gradient of the expression to gradients already
    there (W's, B's), and writes it into a kept buffer that becomes B.grad when B has none: the
    second call reuses the buffer (same storage), no new tensor."""
    ww, bb, wb = form
    torch.manual_seed(2)
    W = torch.randn(5, 2, 3, dtype=F64, requires_grad=True)
    B = torch.randn_like(W).requires_grad_()
    W_in = W if with_w else W.detach()
    expression = ww * (W_in * W_in).sum() + bb * (B * B).sum() + wb * (W_in * B).sum()
    dW, dB = torch.autograd.grad(0.7 * expression, (W, B), allow_unused=True)
    earlier = torch.randn_like(W)
    W.grad, B.grad = earlier.clone(), earlier.clone()  # gradients already there: added to
    assert add_quadratic_gradient(W_in, B, ww, bb, wb, 0.7) is None
    torch.testing.assert_close(B.grad, earlier + dB, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(W.grad, earlier + (dW if with_w else 0.0), rtol=1e-12, atol=1e-14)
    B.grad = None  # none there: written into the buffer, which becomes B.grad
    buffer = add_quadratic_gradient(W_in.detach(), B, ww, bb, wb, 0.7)
    assert buffer is B.grad
    torch.testing.assert_close(B.grad, dB, rtol=1e-12, atol=1e-14)
    B.grad = None
    with torch.no_grad():
        B.mul_(2.0)
    dB_again = 2 * bb * 0.7 * B.detach() + wb * 0.7 * W.detach()
    assert add_quadratic_gradient(W.detach(), B, ww, bb, wb, 0.7, buffer) is buffer
    assert B.grad is buffer
    torch.testing.assert_close(B.grad, dB_again, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("form", [(1e-3, 1e-3, -2e-3), (1.0, 1.0, 0.0), (0.0, 0.0, -1.0)], ids=["sa", "decay", "self"])
def test_add_quadratic_gradient_without_its_own_decay_leaves_2bb_B_to_the_optimizer(form):
    """own_decay=False: B.grad + scale 2 bb B is the whole gradient, both when B.grad was there and
    when it was None (then zeros when nothing else is left: the optimizer still sees a gradient)."""
    ww, bb, wb = form
    torch.manual_seed(4)
    W, B = torch.randn(3, 4, dtype=F64), torch.randn(3, 4, dtype=F64, requires_grad=True)
    whole = 0.7 * (2 * bb * B.detach() + wb * W)
    for earlier in (None, torch.randn(3, 4, dtype=F64)):
        B.grad = None if earlier is None else earlier.clone()
        add_quadratic_gradient(W, B, ww, bb, wb, 0.7, own_decay=False)
        assert B.grad is not None
        base = 0.0 if earlier is None else earlier
        torch.testing.assert_close(B.grad + 0.7 * 2 * bb * B.detach(), base + whole, rtol=1e-12, atol=1e-14)


def test_a_rules_weight_terms_are_one_form_equal_to_the_sum_of_its_primitives(case):
    """The rule sums decay and self into one quadratic form: value and dB equal the sum of each
    primitive's own (the reference table's hand-written values)."""
    layer = case.layer
    rule = build_rule(RuleSpec("probe"), TABLE, weights={"decay": 0.7, "self": 1.3, "amp": 0.2})
    reference = case.reference()
    value = rule.regularizer(layer)
    (grad,) = torch.autograd.grad(value, layer.backward_weight)
    expected = {k: 0.7 * reference["decay"][k] + 1.3 * reference["self"][k] + 0.2 * reference["amp"][k] for k in (0, 1)}
    torch.testing.assert_close(value, expected[0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, expected[1], rtol=1e-10, atol=1e-12)
