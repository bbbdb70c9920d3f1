"""The sign-symmetry example plugin's math, loaded in process through the public hooks."""

import importlib.util
from pathlib import Path

import torch

from neural_alignment.core.alignment import alignment_loss
from neural_alignment.core.context import AlignmentContext
from neural_alignment.core.rules import build_rule
from neural_alignment.registry import Registry

PLUGIN = Path(__file__).resolve().parents[1] / "examples" / "plugin-sign-symmetry" / "neural_alignment_sign_symmetry" / "__init__.py"


def load_plugin():
    spec = importlib.util.spec_from_file_location("neural_alignment_sign_symmetry", PLUGIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sign_rule(**overrides):
    registry = Registry(autoload=False, extra_plugins=[load_plugin()])
    return build_rule(registry.get("rules", "sign_symmetry"), registry.catalog("primitives"), **overrides), registry


def test_sign_primitive_value_and_gradient_match_the_formula():
    rule, registry = sign_rule(align_forward_weight=True)  # ctx.W attached: the primitive must detach it
    linear = registry.get("ops", "linear").from_module(torch.nn.Linear(5, 3).double(), rule)
    linear(torch.randn(4, 5, dtype=torch.float64))
    W, B = linear.weight.detach(), linear.backward_weight
    target = torch.sign(W) * W.abs().mean()
    value = registry.get("primitives", "sign")(AlignmentContext(linear, rule))
    torch.testing.assert_close(value, ((B.detach() - target) ** 2).sum(), rtol=0, atol=1e-12)
    value.backward()
    torch.testing.assert_close(B.grad, 2 * (B.detach() - target), rtol=0, atol=1e-12)
    assert linear.weight.grad is None  # W is detached: only B learns


def test_training_the_rule_makes_b_sign_concordant_with_w():
    torch.manual_seed(0)
    rule, registry = sign_rule()
    linear = registry.get("ops", "linear").from_module(torch.nn.Linear(8, 6), rule)
    optimizer = torch.optim.SGD([linear.backward_weight], lr=0.1)
    for _ in range(100):
        linear(torch.randn(16, 8))
        optimizer.zero_grad()
        alignment_loss(linear).backward()
        optimizer.step()
    W, B = linear.weight.detach(), linear.backward_weight.detach()
    assert torch.equal(torch.sign(B), torch.sign(W))
    torch.testing.assert_close(B, torch.sign(W) * W.abs().mean(), rtol=0, atol=1e-4)
