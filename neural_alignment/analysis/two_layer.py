"""Appendix D.2: a two-layer scalar linear network under bp, fa and sa (or any registered rule).

The network y = w2 w1 x, trained on scalar data {x_i, y_i} with J = sum_i (y_i - w2 w1 x_i)^2 / (2n);
b is the second layer's backward weight. Its gradient flow (D.2, eqs. 2-4), with
a = mean(y x) and s = mean(x^2):

    dw1/dt = b (a - w2 w1 s),   dw2/dt = w1 (a - w2 w1 s),
    db/dt  = 0 (fa),  b = w2 (bp),  -rate * dR/db (a rule that trains B; sa: 2 rate decay (w2 - b))

Here the flow is not written out: it is read from two real ``AlignedLinear(1, 1)`` layers with
the registered rule, as the trainer would train them (the task gradient through the op, R of
the second layer at ``alignment_rate`` ``rate``; the first layer's B never reaches (w1, w2, b)).
bp has no b: its state is (w1, w2). The Jacobian of the flow is taken by central differences
in float64 (step 1e-5; the field is cubic, so the error is ~1e-11).

On the hyperbola of minima w2 w1 = a / s, D.2's table gives the Jacobian's eigenvalues:

    bp: -(w1^2 + w2^2) s, 0        fa: -(w1^2 + b w2) s, 0, 0        sa (b = w2): -(w1^2 + w2^2) s, 0, -kappa

with kappa the rate of eq. (4) db/dt = kappa (w2 - b): kappa = 2 rate decay (D.2 takes kappa = 1;
the default rate 500 gives it for sa's default decay weight 1e-3). A fixed point is a sink when
no eigenvalue is positive (D.2's text has source and sink the other way round; its table and
conclusions follow this one). ``trajectories`` integrates the flow (RK4) and ``flow_figure``
draws them in (w1, w2, b) with the backprop plane b = w2, the hyperbola of minima on it, and
fa's planes b = b(0).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from neural_alignment.core.alignment import set_epoch
from neural_alignment.core.layers import AlignedLinear
from neural_alignment.core.rules import Rule, build_rule
from neural_alignment.registry import get_registry

DEFAULT_RULES = ("bp", "fa", "sa")
DEFAULT_RATE = 500.0
DEFAULT_W1 = (0.5, 1.0, 2.0, -1.5)
STEP = 1e-5


@dataclass(frozen=True)
class ScalarData:
    """Scalar pairs (x_i, y_i); ``a`` = mean(y x) and ``s`` = mean(x^2) (D.2's alpha and sigma)."""

    x: np.ndarray
    y: np.ndarray

    @property
    def a(self) -> float:
        return float(np.mean(self.y * self.x))

    @property
    def s(self) -> float:
        return float(np.mean(self.x**2))

    @classmethod
    def sample(cls, n: int = 32, slope: float = 1.5, noise: float = 0.3, seed: int = 0) -> ScalarData:
        """x ~ N(0, 1), y = slope x + noise N(0, 1), seeded."""
        rng = np.random.default_rng(seed)
        x = rng.standard_normal(n)
        return cls(x, slope * x + noise * rng.standard_normal(n))


def registered_rule(name: str) -> Rule:
    registry = get_registry()
    return build_rule(registry.get("rules", name), registry.catalog("primitives"))


class TwoLayerFlow:
    """The gradient flow of (w1, w2, b) (bp: (w1, w2)) read from two real aligned layers."""

    def __init__(self, rule: Rule, data: ScalarData, rate: float = DEFAULT_RATE):
        self.rule, self.rate = rule, float(rate)
        self.first = AlignedLinear(1, 1, bias=False, dtype=torch.float64, rule=rule)
        self.second = AlignedLinear(1, 1, bias=False, dtype=torch.float64, rule=rule)
        set_epoch(torch.nn.Sequential(self.first, self.second), 0.0, angle_factor=self.rate)
        self.x = torch.tensor(data.x, dtype=torch.float64).reshape(-1, 1)
        self.y = torch.tensor(data.y, dtype=torch.float64).reshape(-1, 1)

    @property
    def has_b(self) -> bool:
        return self.rule.has_backward_weight

    @property
    def names(self) -> tuple[str, ...]:
        return ("w1", "w2", "b") if self.has_b else ("w1", "w2")

    def __call__(self, state: Sequence[float] | np.ndarray) -> np.ndarray:
        """d/dt of ``state`` = (w1, w2, b) (bp: (w1, w2)): minus the gradients the trainer would apply."""
        b = self.second.backward_weight  # not None exactly when has_b
        with torch.no_grad():
            self.first.weight.fill_(state[0])
            self.second.weight.fill_(state[1])
            if b is not None:
                b.fill_(state[2])
        for p in (self.first.weight, self.second.weight, b):
            if p is not None:
                p.grad = None
        out = self.second(self.first(self.x))
        loss = 0.5 * (self.y - out).pow(2).mean() + self.rate * self.rule.regularizer(self.second, 0.0)
        loss.backward()
        params = [self.first.weight, self.second.weight] + ([b] if b is not None else [])
        return np.array([0.0 if p.grad is None else -p.grad.item() for p in params])

    def jacobian(self, state: Sequence[float]) -> np.ndarray:
        """J[i, j] = d(flow_i) / d(state_j), by central differences."""
        z = np.asarray(state, dtype=float)
        columns = []
        for j in range(len(z)):
            h = STEP * max(1.0, abs(z[j]))
            up, down = z.copy(), z.copy()
            up[j] += h
            down[j] -= h
            columns.append((self(up) - self(down)) / (2 * h))
        return np.stack(columns, axis=1)


def closed_form_eigenvalues(rule: Rule, state: Sequence[float], data: ScalarData, rate: float) -> np.ndarray | None:
    """D.2's eigenvalues at a minimum (ascending), for bp, fa and sa (sa at b = w2); None otherwise."""
    w1, w2 = state[0], state[1]
    s = data.s
    if rule.name == "bp":
        return np.sort([-(w1**2 + w2**2) * s, 0.0])
    if rule.name == "fa":
        return np.sort([-(w1**2 + state[2] * w2) * s, 0.0, 0.0])
    if rule.name == "sa" and set(rule.weights) == {"decay", "self"} and np.isclose(state[2], w2):
        kappa = 2 * rate * rule.weights["decay"]
        return np.sort([-(w1**2 + w2**2) * s, 0.0, -kappa])
    return None


def minima(data: ScalarData, w1s: Sequence[float], b: float | None = None) -> list[tuple[float, ...]]:
    """Points (w1, a / (s w1), b) on the hyperbola of minima; b defaults to w2 (the backprop plane)."""
    ratio = data.a / data.s
    return [(w1, ratio / w1, ratio / w1 if b is None else b) for w1 in w1s]


@dataclass(frozen=True)
class FixedPoint:
    """One point on the hyperbola: the flow there (~0), the Jacobian's eigenvalues and D.2's."""

    state: tuple[float, ...]
    flow: np.ndarray
    eigenvalues: np.ndarray
    closed_form: np.ndarray | None

    @property
    def kind(self) -> str:
        """'sink' (no eigenvalue > 0), 'source' (none < 0) or 'saddle', at a tolerance of 1e-7;
        'not a fixed point' where the flow is not 0 (a rule whose B has other fixed points)."""
        if np.abs(self.flow).max() > 1e-9:
            return "not a fixed point"
        positive, negative = (self.eigenvalues > 1e-7).any(), (self.eigenvalues < -1e-7).any()
        return "saddle" if positive and negative else "source" if positive else "sink"


def fixed_points(
    rule: Rule,
    data: ScalarData,
    rate: float = DEFAULT_RATE,
    w1s: Sequence[float] = DEFAULT_W1,
    fa_bs: Sequence[float] = (0.5, -1.0),
) -> list[FixedPoint]:
    """D.2 at points of the hyperbola: on the plane b = w2, and for a rule that does not train B
    (fa) also at b = each of ``fa_bs`` (D.2: only some minima are sinks of fa's flow)."""
    flow = TwoLayerFlow(rule, data, rate)
    points = minima(data, w1s)
    if rule.has_backward_weight and not rule.trains_backward_weight:
        points += [p for b in fa_bs for p in minima(data, w1s, b)]
    out = []
    for point in points:
        state = point if flow.has_b else point[:2]
        eigenvalues = np.sort(np.linalg.eigvals(flow.jacobian(state)).real)
        out.append(FixedPoint(tuple(point), flow(state), eigenvalues, closed_form_eigenvalues(rule, point, data, rate)))
    return out


def format_fixed_points(rule: Rule, points: Sequence[FixedPoint]) -> str:
    rows: list[tuple[str, ...]] = [
        ("w1", "w2", "b", "|flow|", "eigenvalues (Jacobian of the layers' flow)", "eigenvalues (D.2)", "kind")
    ]
    for p in points:
        closed = "n/a" if p.closed_form is None else ", ".join(f"{v:.5g}" for v in p.closed_form)
        rounded = np.where(np.abs(p.eigenvalues) < 1e-9, 0.0, p.eigenvalues)  # differencing noise (~1e-13) shown as 0
        rows.append(
            (
                *(f"{v:.4g}" for v in p.state),
                f"{np.abs(p.flow).max():.1e}",
                ", ".join(f"{v:.5g}" for v in rounded),
                closed,
                p.kind,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    implicit = "" if rule.has_backward_weight else " (no b: b = w2 implicitly; state (w1, w2))"
    lines = [f"rule {rule.name}{implicit}"]
    lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join(lines)


def rk4(flow: TwoLayerFlow, start: Sequence[float], t_end: float, steps: int) -> np.ndarray:
    """The trajectory of ``flow`` from ``start`` over [0, t_end] (classical Runge-Kutta), [steps + 1, dim]."""
    dt = t_end / steps
    path = [np.asarray(start, dtype=float)]
    for _ in range(steps):
        z = path[-1]
        k1 = flow(z)
        k2 = flow(z + dt / 2 * k1)
        k3 = flow(z + dt / 2 * k2)
        k4 = flow(z + dt * k3)
        path.append(z + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4))
    return np.stack(path)


def starts(count: int = 4, seed: int = 0, scale: float = 1.5) -> np.ndarray:
    """Seeded initial (w1, w2, b), uniform in [-scale, scale]^3."""
    return np.random.default_rng(seed).uniform(-scale, scale, size=(count, 3))


def trajectories(
    rule: Rule, data: ScalarData, initial: np.ndarray, rate: float = DEFAULT_RATE, t_end: float = 8.0, steps: int = 200
) -> list[np.ndarray]:
    """One [steps + 1, 3] path of (w1, w2, b) per initial point (bp: b = w2 along the path)."""
    flow = TwoLayerFlow(rule, data, rate)
    paths = []
    for start in initial:
        path = rk4(flow, start if flow.has_b else start[:2], t_end, steps)
        paths.append(path if flow.has_b else np.column_stack([path, path[:, 1]]))
    return paths


def flow_figure(paths_by_rule: dict[str, list[np.ndarray]], data: ScalarData, frozen_b: Sequence[str] = ()):
    """One 3-D panel per rule: trajectories (start o, end x), the plane b = w2 with the hyperbola
    w1 w2 = a / s on it, and for the rules in ``frozen_b`` (fa) each trajectory's plane b = b(0)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5 * max(1, len(paths_by_rule)), 5), layout="constrained")
    FigureCanvasAgg(figure)
    ratio = data.a / data.s
    lim = 2.5
    grid = np.linspace(-lim, lim, 2)
    G1, G2 = np.meshgrid(grid, grid)
    branch = np.linspace(ratio / lim, lim, 60)
    for index, (name, paths) in enumerate(paths_by_rule.items(), 1):
        ax = figure.add_subplot(1, len(paths_by_rule), index, projection="3d")
        ax.plot_surface(G1, G2, G2, alpha=0.12, color="grey")  # b = w2
        for sign in (1, -1):
            ax.plot(
                sign * branch,
                sign * ratio / branch,
                sign * ratio / branch,
                color="black",
                lw=1.5,
                label="minima on b = w2" if sign == 1 else None,
            )
        for k, path in enumerate(paths):
            colour = f"C{k % 10}"
            if name in frozen_b:
                ax.plot_surface(G1, G2, np.full_like(G1, path[0, 2]), alpha=0.06, color=colour)
            ax.plot(path[:, 0], path[:, 1], path[:, 2], color=colour, lw=1.2)
            ax.scatter(*path[0], color=colour, marker="o", s=12)
            ax.scatter(*path[-1], color=colour, marker="x", s=20)
        ax.set(
            xlim=(-lim, lim), ylim=(-lim, lim), zlim=(-lim, lim), xlabel="w1", ylabel="w2", zlabel="b", title=f"{name}"
        )
        ax.legend(fontsize="small", loc="upper left")
    return figure


def plot_flows(
    rules: Sequence[Rule],
    data: ScalarData,
    path: str | Path,
    rate: float = DEFAULT_RATE,
    count: int = 4,
    seed: int = 0,
    t_end: float = 8.0,
    steps: int = 200,
) -> Path:
    """Integrate ``count`` seeded trajectories per rule and write ``flow_figure`` as a PNG at ``path``."""
    initial = starts(count, seed)
    paths = {rule.name: trajectories(rule, data, initial, rate, t_end, steps) for rule in rules}
    frozen = [r.name for r in rules if r.has_backward_weight and not r.trains_backward_weight]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    flow_figure(paths, data, frozen).savefig(path, format="png", dpi=110)
    return path
