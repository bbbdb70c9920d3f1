"""Appendix D.1: the stability of a rule's layer-wise regularizer in the scalar linear case.

One aligned layer with scalar forward weight w, backward weight b and input x (a batch of
one; no bias, no layer-wise operations, no input noise: D.1 "ignores biases and
non-linearities"). The *symmetrized* gradient flow lets both weights descend R_l:

    d/dt (w, b) = -grad R(w, b),    linearised:  d/dt (w, b) = -A (w, b),   A = Hessian of R at (w, b)

(for the quadratic regularizers of the built-in primitives A is the same everywhere and the
linearisation is exact). A is computed numerically, by autograd through the registered rule's
own primitives (``Rule.regularizer`` on a real ``AlignedLinear(1, 1)`` whose W is made to take
alignment gradients), so it holds for any registered rule, a plugin's too. A mode grows when
A has a negative eigenvalue: the flow is *unstable* at that x.

D.1's closed forms, in the paper's weights (alpha weighs P_self/P_amp, beta P_decay/P_sparse;
the paper's P_decay and P_sparse carry a factor 1/2 that ours do not, so our decay weight is
beta / 2) with alpha = beta:

    A_SA = alpha [[1, -1], [-1, 1]]                          (alpha = weight of self = 2 x weight of decay)
    A_AA = alpha x^2 [[1, -1], [-1, 1]]                      (alpha = weight of amp = 2 x weight of sparse)
    A_WM = alpha [[lambda_WM, -x^2], [-x^2, lambda_WM]]      (alpha = weight of amp, lambda_WM = beta / alpha
                                                              = 2 x weight of decay / weight of amp;
                                                              1 when alpha = beta)

In the eigenbasis u = (1, 1), v = (1, -1): lambda_u = 0 for SA and AA, alpha (lambda_WM - x^2)
for WM (negative, so unstable, when x^2 > lambda_WM); lambda_v = 2 alpha and 2 alpha x^2 for SA
and AA (D.1's text says 1 and x^2: its own matrices give 2 and 2 x^2), alpha (lambda_WM + x^2)
for WM. The closed form applies only when the rule weighs exactly the primitives it names
(and, for SA and AA, in the ratio alpha = beta); otherwise it is reported as not applicable.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from neural_alignment.core.layers import AlignedLinear
from neural_alignment.core.rules import FLAG_NAMES, Rule, build_rule
from neural_alignment.registry import get_registry

DEFAULT_XS: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)
DEFAULT_POINT: tuple[float, float] = (0.7, -0.4)
CLOSED_FORM_RULES = ("sa", "aa", "wm")


def scalar_rule(name: str, weights: Mapping[str, float] | None = None) -> Rule:
    """The registered rule ``name`` (weights merged with ``weights``) in D.1's setting: every
    layer-wise operation off, no input noise, W taking alignment gradients (the symmetrized flow)."""
    registry = get_registry()
    return build_rule(
        registry.get("rules", name),
        registry.catalog("primitives"),
        weights=dict(weights or {}) or None,
        flags={flag: False for flag in FLAG_NAMES},
        noise_std=0.0,
        align_forward_weight=True,
    )


def regularizer_matrix(rule: Rule, w: float, b: float, x: float) -> np.ndarray:
    """A = the Hessian of R_l(w, b) at (w, b) for input x, by autograd through ``rule.regularizer``.

    Rows and columns are (w, b). A rule without a trained backward weight (bp, fa) has R_l = 0,
    so A = 0. Coefficients are read at epoch 0.
    """
    if not (rule.has_backward_weight and rule.trains_backward_weight):
        return np.zeros((2, 2))
    layer = AlignedLinear(1, 1, bias=False, dtype=torch.float64, rule=rule)
    B = layer.backward_weight
    assert B is not None  # the rule has a backward weight
    with torch.no_grad():
        layer.weight.fill_(w)
        B.fill_(b)
    layer(torch.full((1, 1), float(x), dtype=torch.float64))
    params = [layer.weight, B]
    R = rule.regularizer(layer, epoch=0.0)
    if not R.requires_grad:  # every primitive the rule weighs is delivered by the op (angle) or weighed 0
        return np.zeros((2, 2))
    grads = torch.autograd.grad(R, params, create_graph=True)
    rows = []
    for g in grads:
        second = torch.autograd.grad(g.sum(), params, retain_graph=True, allow_unused=True)
        rows.append([0.0 if s is None else s.item() for s in second])
    return np.array(rows)


def closed_form_matrix(rule: Rule, x: float) -> np.ndarray | None:
    """D.1's A for ``rule`` (sa, aa, wm by name) at input x, from its weights; None when D.1 gives none."""
    weights = {k: v for k, v in rule.weights.items() if v != 0.0}
    skew = np.array([[1.0, -1.0], [-1.0, 1.0]])
    if rule.name == "sa" and weights.keys() == {"self", "decay"} and np.isclose(weights["self"], 2 * weights["decay"]):
        return weights["self"] * skew
    if rule.name == "aa" and weights.keys() == {"amp", "sparse"} and np.isclose(weights["amp"], 2 * weights["sparse"]):
        return weights["amp"] * x**2 * skew
    if rule.name == "wm" and weights.keys() == {"amp", "decay"}:
        alpha = weights["amp"]
        lam = 2 * weights["decay"] / alpha
        return alpha * np.array([[lam, -(x**2)], [-(x**2), lam]])
    return None


def closed_form_condition(rule: Rule) -> str | None:
    """D.1's stability condition for ``rule``, in words, or None."""
    if rule.name == "wm" and closed_form_matrix(rule, 1.0) is not None:
        lam = 2 * rule.weights["decay"] / rule.weights["amp"]
        return f"D.1: lambda_u = alpha (lambda_WM - x^2) < 0 when x^2 > lambda_WM = {lam:g}"
    if rule.name in ("sa", "aa") and closed_form_matrix(rule, 1.0) is not None:
        return "D.1: lambda_u = 0, lambda_v > 0 at every x"
    return None


@dataclass(frozen=True)
class Evaluation:
    """A at one input x, its eigenvalues (ascending) and eigenvectors (columns), and D.1's A if any."""

    x: float
    matrix: np.ndarray
    eigenvalues: np.ndarray
    eigenvectors: np.ndarray
    closed_form: np.ndarray | None

    @property
    def closed_eigenvalues(self) -> np.ndarray | None:
        """The eigenvalues (ascending) of D.1's closed-form A, where the rule has one."""
        return None if self.closed_form is None else np.linalg.eigvalsh(self.closed_form)

    def growing(self, tolerance: float) -> bool:
        """Whether A has an eigenvalue below -tolerance: a mode of d/dt (w, b) = -A (w, b) that grows."""
        return bool(self.eigenvalues[0] < -tolerance)


@dataclass(frozen=True)
class Analysis:
    """D.1 for one rule at a point (w, b) and several inputs x, with the verdict."""

    rule: Rule
    point: tuple[float, float]
    evaluations: list[Evaluation]

    @property
    def tolerance(self) -> float:
        """Eigenvalues below -tolerance count as negative (1e-9 of the largest |A| entry, or 1e-15)."""
        scale = max((float(np.abs(e.matrix).max()) for e in self.evaluations), default=0.0)
        return max(1e-9 * scale, 1e-15)

    @property
    def stable(self) -> bool:
        """No x of the analysis has a growing mode."""
        return not any(e.growing(self.tolerance) for e in self.evaluations)

    def verdict(self) -> str:
        """'stable ...' or 'unstable ...' with the x and the growing mode it was found at."""
        xs = ", ".join(f"{e.x:g}" for e in self.evaluations)
        condition = closed_form_condition(self.rule)
        if self.stable:
            text = f"stable: no eigenvalue of A is negative at x = {xs}"
        else:
            bad = [e for e in self.evaluations if e.growing(self.tolerance)]
            modes = "; ".join(
                f"x = {e.x:g}: eigenvalue {e.eigenvalues[0]:.4g}, mode "
                f"({e.eigenvectors[0, 0]:.2f}, {e.eigenvectors[1, 0]:.2f}) grows"
                for e in bad
            )
            text = f"unstable: {modes}"
        return f"{text} ({condition})" if condition else text


def analyze(rule: Rule, xs: Sequence[float] = DEFAULT_XS, point: tuple[float, float] = DEFAULT_POINT) -> Analysis:
    """A, its eigen-decomposition and D.1's closed form at each x, evaluated at (w, b) = ``point``."""
    evaluations = []
    for x in xs:
        matrix = regularizer_matrix(rule, point[0], point[1], x)
        values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
        vectors = vectors * np.where(vectors[0] < 0, -1.0, 1.0)  # sign fixed: first entry >= 0
        evaluations.append(Evaluation(float(x), matrix, values, vectors, closed_form_matrix(rule, x)))
    return Analysis(rule, point, evaluations)


def format_matrix(matrix: np.ndarray | None) -> str:
    if matrix is None:
        return "n/a"
    return "[" + ", ".join("[" + ", ".join(f"{v:.4g}" for v in row) + "]" for row in matrix) + "]"


def format_analysis(analysis: Analysis) -> str:
    """The rule's table (A from autograd beside D.1's, eigenvalues of each) and its verdict."""
    rule = analysis.rule
    weights = ", ".join(f"{k}={v:g}" for k, v in rule.weights.items()) or "none"
    lines = [f"rule {rule.name} (weights: {weights}), at (w, b) = ({analysis.point[0]:g}, {analysis.point[1]:g})"]
    rows = [("x", "A (autograd on the rule)", "eigenvalues", "A (D.1 closed form)", "eigenvalues (D.1)")]
    for e in analysis.evaluations:
        closed = e.closed_eigenvalues
        rows.append(
            (
                f"{e.x:g}",
                format_matrix(e.matrix),
                ", ".join(f"{v:.4g}" for v in e.eigenvalues),
                format_matrix(e.closed_form),
                "n/a" if closed is None else ", ".join(f"{v:.4g}" for v in closed),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    delivered = [name for name, p in rule.primitives.items() if p.in_backward and rule.weights[name]]
    if delivered:
        lines.append(f"  note: {', '.join(delivered)} is delivered by the op in the task backward, not part of R_l")
    lines.append(f"  verdict: {analysis.verdict()}")
    return "\n".join(lines)
