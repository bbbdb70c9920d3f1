"""Figures drawn from run records (rows of ``metrics.jsonl``).

``plot_comparison`` draws what ``nalign compare`` reports: for each rule, test accuracy
against the training step (left) and the mean weight angle between W and B against the
step (right). ``plot_grid`` draws a comparison grid (``nalign compare --vary``): each metric of
``PANELS`` against the varied value, one line per rule, error bars the standard error across
seeds. Uses matplotlib's Agg canvas directly (no pyplot state, no display needed).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

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
    """Two panels (see ``PANELS``), one line per history (legend: its name, e.g. the rule); rows lacking
    a key are skipped."""
    figure = Figure(figsize=(10, 4), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(PANELS))
    for ax, (key, label) in zip(axes, PANELS, strict=True):
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


def save_png(figure: Figure, path: str | Path, dpi: int = 120) -> Path:
    """Write ``figure`` as a PNG at ``path`` (its folder made if needed); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=dpi)
    return path


def plot_comparison(histories: Mapping[str, Sequence[Mapping[str, float]]], path: str | Path) -> Path:
    """Write the comparison figure of ``histories`` (name -> rows) as a PNG at ``path``; returns the path."""
    return save_png(comparison_figure(histories), path)


def grid_figure(rows: Sequence[Mapping], vary_key: str, panels: Sequence[tuple[str, str]] = PANELS) -> Figure:
    """One panel per metric: ``<metric>`` against the varied value (equally spaced, labelled by the
    value's text), one line per rule, error bars ``<metric>_sem`` (none where it is ``None``)."""
    values = list(dict.fromkeys(row["value"] for row in rows))
    rules = list(dict.fromkeys(row["rule"] for row in rows))
    figure = Figure(figsize=(5 * len(panels), 4), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for ax, (key, label) in zip(axes, panels, strict=True):
        for index, rule in enumerate(rules):
            points = [
                (values.index(r["value"]), r[key], r.get(f"{key}_sem") or 0.0)
                for r in rows
                if r["rule"] == rule and r.get(key) is not None
            ]
            if points:
                xs, ys, errors = zip(*points, strict=True)
                ax.errorbar(
                    xs, ys, yerr=errors, color=f"C{index % 10}", marker="o", markersize=3, capsize=3, label=rule
                )
        ax.set_xticks(range(len(values)), [str(v) for v in values])
        ax.set_xlabel(vary_key)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize="small")
    return figure


def plot_grid(rows: Sequence[Mapping], vary_key: str, path: str | Path) -> Path:
    """Write :func:`grid_figure` of the aggregated ``rows`` as a PNG at ``path``; returns the path."""
    return save_png(grid_figure(rows, vary_key), path)
