"""Figures drawn from run records (rows of ``metrics.jsonl``).

``plot_comparison`` draws what ``nalign compare`` reports: for each rule, test accuracy
against the training step (left) and the mean weight angle between W and B against the
step (right). Uses matplotlib's Agg canvas directly (no pyplot state, no display needed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

PANELS: tuple[tuple[str, str], ...] = (
    ("test_acc", "test accuracy"),
    ("mean_weight_angle", "mean weight angle (degrees)"),
)


def series(rows: Sequence[Mapping[str, float]], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of ``key`` over the rows that have both ``step`` and ``key``, in row order."""
    points = [(row["step"], row[key]) for row in rows if "step" in row and row.get(key) is not None]
    return [p[0] for p in points], [p[1] for p in points]


def comparison_figure(histories: Mapping[str, Sequence[Mapping[str, float]]]) -> Figure:
    """Two panels (see ``PANELS``), one line per history (legend: its name, e.g. the rule); rows lacking a key are skipped."""
    figure = Figure(figsize=(10, 4), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(PANELS))
    for ax, (key, label) in zip(axes, PANELS):
        for index, (name, rows) in enumerate(histories.items()):
            steps, values = series(rows, key)
            if steps:  # colour fixed by position, so a rule keeps its colour in both panels
                ax.plot(steps, values, color=f"C{index % 10}", marker="o", markersize=3, label=name)
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize="small")
    return figure


def plot_comparison(histories: Mapping[str, Sequence[Mapping[str, float]]], path: str | Path) -> Path:
    """Write the comparison figure of ``histories`` (name -> rows) as a PNG at ``path``; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    comparison_figure(histories).savefig(path, format="png", dpi=120)
    return path
