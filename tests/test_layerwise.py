"""Appendix D.1: A by autograd through the registered rules equals D.1's closed forms; verdicts."""

from __future__ import annotations

import numpy as np
import pytest

from neural_alignment.analysis import layerwise
from neural_alignment.cli import main
from neural_alignment.core.rules import RuleSpec
from neural_alignment.registry import Registry, hookimpl, manager

POINTS = [(0.7, -0.4, 0.5), (-1.3, 2.0, 1.0), (0.2, 0.9, 2.0), (3.0, 3.0, 4.0), (0.0, -0.6, 1.7)]


def hand_matrix(c_decay=0.0, c_self=0.0, c_amp=0.0, c_sparse=0.0, x=1.0):
    """Hessian of c_decay (w^2 + b^2) - c_self w b - c_amp x^2 w b + c_sparse x^2 (w^2 + b^2), by hand."""
    diagonal = 2 * c_decay + 2 * c_sparse * x**2
    off = -(c_self + c_amp * x**2)
    return np.array([[diagonal, off], [off, diagonal]])


@pytest.mark.parametrize(
    "name, weights, coefficients",
    [
        ("sa", None, dict(c_decay=1e-3, c_self=2e-3)),
        ("aa", None, dict(c_sparse=1e-3, c_amp=2e-3)),
        ("wm", None, dict(c_amp=1e-3, c_decay=1e-3)),
        ("wm", {"decay": 5e-4}, dict(c_amp=1e-3, c_decay=5e-4)),  # alpha = beta in the paper's weights
    ],
)
@pytest.mark.parametrize("w, b, x", POINTS)
def test_autograd_matrix_equals_d1_closed_form_and_hand_hessian(name, weights, coefficients, w, b, x):
    rule = layerwise.scalar_rule(name, weights)
    numeric = layerwise.regularizer_matrix(rule, w, b, x)
    closed = layerwise.closed_form_matrix(rule, x)
    np.testing.assert_allclose(numeric, closed, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(numeric, hand_matrix(x=x, **coefficients), rtol=1e-9, atol=1e-12)
    evaluation = layerwise.analyze(rule, [x], (w, b)).evaluations[0]
    np.testing.assert_allclose(evaluation.eigenvalues, evaluation.closed_eigenvalues, rtol=1e-6, atol=1e-12)


def test_d1_eigenvalues_in_the_u_v_basis():
    """lambda_u = alpha (lambda_WM - x^2) for wm; 0 and 2 alpha (x^2) for sa (aa)."""
    x = 1.5
    wm = layerwise.analyze(layerwise.scalar_rule("wm", {"decay": 5e-4}), [x]).evaluations[0]
    assert wm.eigenvalues == pytest.approx([1e-3 * (1 - x**2), 1e-3 * (1 + x**2)], rel=1e-9)
    assert abs(wm.eigenvectors[0, 0] - wm.eigenvectors[1, 0]) < 1e-9  # the growing mode is u = (1, 1)
    sa = layerwise.analyze(layerwise.scalar_rule("sa"), [x]).evaluations[0]
    assert sa.eigenvalues == pytest.approx([0.0, 2 * 2e-3], abs=1e-15)
    aa = layerwise.analyze(layerwise.scalar_rule("aa"), [x]).evaluations[0]
    assert aa.eigenvalues == pytest.approx([0.0, 2 * 2e-3 * x**2], abs=1e-15)


def test_verdicts_wm_unstable_sa_aa_stable():
    wm = layerwise.analyze(layerwise.scalar_rule("wm", {"decay": 5e-4}))
    assert not wm.stable
    assert wm.verdict().startswith("unstable") and "x = 2" in wm.verdict() and "lambda_WM = 1" in wm.verdict()
    assert "x = 0.5:" not in wm.verdict()  # x^2 < lambda_WM: stable there
    assert not layerwise.analyze(layerwise.scalar_rule("wm")).stable  # the built-in weights: lambda_WM = 2
    for name in ("sa", "aa", "bp", "fa", "kp"):
        analysis = layerwise.analyze(layerwise.scalar_rule(name))
        assert analysis.stable and analysis.verdict().startswith("stable"), name


def test_closed_form_is_not_applied_when_alpha_differs_from_beta():
    assert layerwise.closed_form_matrix(layerwise.scalar_rule("sa", {"decay": 5e-4}), 1.0) is None
    assert layerwise.closed_form_matrix(layerwise.scalar_rule("ia"), 1.0) is None


class _MirrorOnly:
    """A third-party rule: amp alone (weight mirror without decay)."""

    @hookimpl
    def register_rules(self, register):
        register("mirror_only", RuleSpec("mirror_only", weights={"amp": 1e-3}))


def test_a_plugin_rule_is_analysed_through_its_primitives(monkeypatch, capsys):
    registry = Registry(autoload=False, extra_plugins=[_MirrorOnly()])
    monkeypatch.setattr(manager, "_default", registry)
    rule = layerwise.scalar_rule("mirror_only")
    np.testing.assert_allclose(
        layerwise.regularizer_matrix(rule, 0.3, 0.8, 2.0), hand_matrix(c_amp=1e-3, x=2.0), rtol=1e-9
    )
    assert main(["analyze", "d1", "--rule", "mirror_only", "--x", "1"]) == 0
    printed = capsys.readouterr().out
    assert "rule mirror_only" in printed and "verdict: unstable: x = 1: eigenvalue -0.001" in printed


def test_cli_prints_closed_forms_and_verdicts(capsys):
    assert main(["analyze", "d1", "--rule", "wm", "--weight", "wm.decay=5e-4", "--rule", "sa"]) == 0
    out = capsys.readouterr().out
    assert "rule wm (weights: amp=0.001, decay=0.0005)" in out and "[[0.001, -0.004], [-0.004, 0.001]]" in out
    verdicts = [line for line in out.splitlines() if "verdict" in line]
    assert verdicts[0].strip().startswith("verdict: unstable") and verdicts[1].strip().startswith("verdict: stable")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--rule", "wn"], "Did you mean 'wm'"),
        (["--weight", "decay=1"], "RULE.PRIMITIVE=NUMBER"),
        (["--rule", "sa", "--weight", "wm.decay=1"], "not analysed"),
        (["--rule", "sa", "--weight", "sa.dekay=1"], "unknown primitive 'dekay'"),
        (["--x", "1,a"], "--x must be"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(args, message, capsys):
    assert main(["analyze", "d1", *args]) == 2
    out, err = capsys.readouterr()
    assert message in err and len(err.strip().splitlines()) == 1 and out == ""
