"""``nalign report``: the figures of appendix C for one or several runs, in one offline HTML page.

Figures (PNG files in the output folder, and embedded in ``index.html`` as base64 data, so the
page references no other file):

- ``curves.png``: test accuracy (solid) and training accuracy (dashed), test loss (solid) and
  training loss (dashed) against the step, one colour per run;
- ``alignment.png``: the mean over layers of the weight angle, the gradient angle and the norm
  ratio ||B||_F / ||W||_F against the step, one colour per run (the runs compared);
- ``layers-<run>.png`` (Fig. S4): per layer, weight angle, gradient angle and norm ratio
  against the step, layers coloured by depth (dark: input side, yellow: output side);
- ``spread-<cell>.png`` (Fig. S4 over seeds): for each group of runs that differ only in their seed
  (labels ``<cell> seed<k>``, as a ``nalign compare --seeds`` grid names them), per layer, the mean
  over the seeds at each step both logged (line) and the band from the lowest to the highest seed;
- ``weights-<run>.png`` (Fig. S3): for chosen layers (rows) at chosen steps (columns), each
  sampled entry as the point (W_ij, B_ij), with the diagonal B = W dotted (runs with weight
  snapshots only; not for bp, whose B is W: a note says so).
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from neural_alignment.analysis.runs import Run, file_stem, load_runs
from neural_alignment.core.errors import UserError

LAYER_PANELS = (
    ("angle", "weight angle (degrees)"),
    ("grad_angle", "gradient angle (degrees)"),
    ("norm_ratio", "norm ratio ||B|| / ||W||"),
)
MEAN_PANELS = (
    ("mean_weight_angle", "mean weight angle (degrees)"),
    ("mean_grad_angle", "mean gradient angle (degrees)"),
    ("mean_norm_ratio", "mean norm ratio ||B|| / ||W||"),
)
DPI = 110
HEADING = "<h1>nalign report</h1>"  # how an earlier report's index.html is recognised


@dataclass(frozen=True)
class Figured:
    """One figure of the report: its file name, title and caption."""

    name: str
    title: str
    caption: str


def _figure(panels: int, height: float = 3.6) -> tuple[Figure, list]:
    figure = Figure(figsize=(4.6 * panels, height), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, panels, squeeze=False)[0]
    return figure, list(axes)


def _finish(ax, xlabel: str, ylabel: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")


def curves_figure(runs: Sequence[Run]) -> Figure:
    """Accuracy and loss against the step, test solid and training dashed, one colour per run."""
    figure, (accuracy, loss) = _figure(2)
    for index, run in enumerate(runs):
        colour = f"C{index % 10}"
        for ax, test_key, train_key in ((accuracy, "test_acc", "train_acc"), (loss, "test_loss", "loss")):
            ax.plot(*run.series(test_key), color=colour, marker="o", markersize=3, label=f"{run.label} test")
            ax.plot(*run.series(train_key), color=colour, linestyle="--", alpha=0.7, label=f"{run.label} train")
    _finish(accuracy, "step", "accuracy")
    _finish(loss, "step", "loss")
    return figure


def alignment_figure(runs: Sequence[Run]) -> Figure:
    """The means over layers (``MEAN_PANELS``) against the step, one colour per run."""
    figure, axes = _figure(len(MEAN_PANELS))
    for ax, (key, label) in zip(axes, MEAN_PANELS, strict=True):
        for index, run in enumerate(runs):
            steps, values = run.series(key)
            if steps:
                ax.plot(steps, values, color=f"C{index % 10}", marker="o", markersize=3, label=run.label)
        _finish(ax, "step", label)
    return figure


def layer_names(run: Run) -> list[str]:
    """The layers ``run`` logged per-layer metrics of, input side first."""
    return run.layers("angle") or run.layers("grad_angle")


def layers_figure(run: Run) -> Figure:
    """Fig. S4: per-layer metrics (``LAYER_PANELS``) against the step, coloured by depth."""
    return per_layer_figure([run], f"{run.label}: per layer, coloured by depth (dark = input side)")


def per_layer_figure(runs: Sequence[Run], title: str) -> Figure:
    """Per-layer metrics (``LAYER_PANELS``) against the step, layers coloured by depth (the first
    run's layers): the runs' mean at each step they all logged, and with several runs the band from
    the lowest to the highest of them."""
    figure, axes = _figure(len(LAYER_PANELS))
    layers = layer_names(runs[0])
    colours = colormaps["viridis"](np.linspace(0.0, 0.9, max(len(layers), 1)))
    for ax, (metric, label) in zip(axes, LAYER_PANELS, strict=True):
        for depth, layer in enumerate(layers):
            steps, mean, low, high = seed_spread(runs, f"{metric}/{layer}")
            if steps:
                ax.plot(steps, mean, color=colours[depth], marker="o", markersize=2, label=layer)
                if len(runs) > 1:
                    ax.fill_between(steps, low, high, color=colours[depth], alpha=0.2, linewidth=0)
        _finish(ax, "step", label)
    figure.suptitle(title, wrap=True)
    return figure


SEED_SUFFIX = re.compile(r"^(?P<cell>.+) seed\d+$")


def seed_groups(runs: Sequence[Run]) -> dict[str, list[Run]]:
    """Runs whose labels differ only in a final ``seed<k>``, by that common part (the grid's cell);
    cells of one run (a spread needs two seeds) or without per-layer metrics are left out."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        match = SEED_SUFFIX.match(run.label)
        if match:
            groups.setdefault(match["cell"], []).append(run)
    return {cell: members for cell, members in groups.items() if len(members) > 1 and layer_names(members[0])}


def seed_spread(runs: Sequence[Run], key: str) -> tuple[list[float], np.ndarray, np.ndarray, np.ndarray]:
    """(steps, mean, lowest, highest) of ``key`` over ``runs`` at the steps every run logged it."""
    series = [dict(zip(*run.series(key), strict=True)) for run in runs]
    steps = sorted(set.intersection(*(set(points) for points in series)))
    values = np.array([[points[step] for step in steps] for points in series], dtype=float).reshape(len(runs), -1)
    return steps, values.mean(axis=0), values.min(axis=0), values.max(axis=0)


def spread_figure(cell: str, runs: Sequence[Run]) -> Figure:
    """Fig. S4 over seeds: per-layer metrics, the seeds' mean (line) and their lowest-to-highest band."""
    return per_layer_figure(
        runs, f"{cell}: per layer, mean of {len(runs)} seeds (band: lowest to highest seed), dark = input side"
    )


def default_choice(available: Sequence, count: int = 3) -> list:
    """First, middle and last of ``available`` (fewer when there are fewer), in order."""
    if len(available) <= count:
        return list(available)
    picks = sorted({round(i * (len(available) - 1) / (count - 1)) for i in range(count)})
    return [available[i] for i in picks]


def weights_figure(run: Run, layers: Sequence[str], steps: Sequence[int]) -> Figure:
    """Fig. S3: rows = ``layers``, columns = ``steps``; each sampled entry at (W_ij, B_ij); diagonal dotted."""
    figure = Figure(figsize=(max(3.2 * len(steps), 4.8), 3.0 * len(layers)), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(layers), len(steps), squeeze=False)
    snaps = {step: run.snapshot(step) for step in steps}
    for row, layer in enumerate(layers):
        for col, step in enumerate(steps):
            ax = axes[row][col]
            pairs = snaps[step][layer]
            ax.scatter(pairs[:, 0], pairs[:, 1], s=2, alpha=0.5, color=f"C{row % 10}", rasterized=True)
            limit = float(np.abs(pairs).max()) * 1.05 or 1.0
            ax.plot([-limit, limit], [-limit, limit], linestyle=":", color="black", linewidth=1)
            ax.set(
                xlim=(-limit, limit),
                ylim=(-limit, limit),
                aspect="equal",
                title=f"layer {layer}, step {step}",
                xlabel="W",
                ylabel="B",
            )
    figure.suptitle(f"{run.label}: forward vs backward weights (sampled entries; dotted: B = W)", wrap=True)
    return figure


def _save(figure: Figure, out: Path, name: str) -> Path:
    path = out / name
    figure.savefig(path, format="png", dpi=DPI)
    return path


def chosen(run: Run, requested: Sequence | None, available: Sequence, missing: str, valid: str) -> list:
    """``requested`` if every item is in ``available`` (else a ``UserError`` naming the missing
    ones and listing ``available``); the first, middle and last of ``available`` when none is requested."""
    if not requested:
        return default_choice(list(available))
    absent = [str(item) for item in requested if item not in available]
    if absent:
        raise UserError(f"run {run.label}: {missing} {', '.join(absent)}; {valid}: {', '.join(map(str, available))}")
    return list(requested)


def scatter_choice(
    run: Run, layers: Sequence[str] | None, steps: Sequence[int] | None
) -> tuple[list[str], list[int]] | None:
    """(layers, steps) of ``run``'s W-versus-B scatter, or None when it has no snapshots."""
    available = run.snapshot_steps()
    if not available:
        return None
    return (
        chosen(run, layers, list(run.snapshot(available[0])), "no weight snapshots of layer(s)", "layers"),
        chosen(run, steps, available, "no weight snapshot at step(s)", "snapshot steps"),
    )


def summary_table(runs: Sequence[Run]) -> str:
    """An HTML table: per run its folder, rule, steps and final metrics (from summary.json)."""
    columns = (
        ("rule", "rule", "{}"),
        ("steps", "steps", "{}"),
        ("test_acc", "test acc", "{:.4f}"),
        ("mean_weight_angle", "mean weight angle", "{:.1f}"),
        ("mean_grad_angle", "mean gradient angle", "{:.1f}"),
        ("mean_norm_ratio", "norm ratio", "{:.2f}"),
    )
    head = "".join(f"<th>{html.escape(title)}</th>" for _, title, _ in columns)
    rows = []
    for run in runs:
        cells = "".join(
            f"<td>{html.escape(fmt.format(run.summary[key]) if run.summary.get(key) is not None else '-')}</td>"
            for key, _, fmt in columns
        )
        rows.append(
            f"<tr><td>{html.escape(run.label)}</td><td><code>{html.escape(str(run.path))}</code></td>{cells}</tr>"
        )
    return f"<table><tr><th>run</th><th>folder</th>{head}</tr>{''.join(rows)}</table>"


def page(runs: Sequence[Run], figures: Sequence[Figured], out: Path, notes: Sequence[str]) -> str:
    """The self-contained HTML: the table, notes, then every figure inline (data: URIs)."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>nalign report</title>',
        "<style>body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}img{max-width:100%}"
        "figure{margin:1.5em 0}figcaption{color:#444}</style></head><body>",
        HEADING,
        summary_table(runs),
    ]
    parts += [f"<p><em>{html.escape(note)}</em></p>" for note in notes]
    for fig in figures:
        data = base64.b64encode((out / fig.name).read_bytes()).decode("ascii")
        parts.append(
            f'<figure><h2>{html.escape(fig.title)}</h2><img alt="{html.escape(fig.title)}" '
            f'src="data:image/png;base64,{data}"><figcaption>{html.escape(fig.caption)} '
            f"({html.escape(fig.name)})</figcaption></figure>"
        )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def check_output_folder(out: Path) -> None:
    """``out`` may be new, empty, or an earlier report (its ``index.html`` has :data:`HEADING`), whose
    files of the same names are replaced; a file, or a folder holding anything else, is a ``UserError``:
    a report never overwrites what a user has."""
    if not out.exists():
        return
    if not out.is_dir():
        raise UserError(f"report folder {out} is a file; give a new or empty folder")
    index = out / "index.html"
    if any(out.iterdir()) and not (index.is_file() and HEADING in index.read_text(encoding="utf-8", errors="replace")):
        raise UserError(
            f"report folder {out} holds files that are not an earlier nalign report; "
            f"give a new or empty folder (nothing was written)"
        )


def build_report(
    paths: Sequence[str | Path],
    out: str | Path,
    layers: Sequence[str] | None = None,
    steps: Sequence[int] | None = None,
) -> list[Figured]:
    """Write the figures and ``index.html`` for the runs of ``paths`` into ``out``; returns the figures.

    ``layers``/``steps`` choose the rows/columns of the weight scatter (default: first, middle and
    last layer and snapshot); a layer or step a run lacks is a ``UserError`` listing what it has.
    ``out`` must be new, empty or an earlier report (:func:`check_output_folder`).
    """
    runs = load_runs(paths)
    scatter = {run.label: scatter_choice(run, layers, steps) for run in runs}  # bad choices fail before drawing
    out = Path(out)
    check_output_folder(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create report folder {out}: {exc.strerror}") from None
    figures = [
        Figured("curves.png", "Accuracy and loss", "test (solid) and training (dashed) against the step"),
        Figured(
            "alignment.png",
            "Alignment, mean over layers",
            "weight angle, gradient angle and norm ratio ||B||/||W|| averaged over layers",
        ),
    ]
    _save(curves_figure(runs), out, "curves.png")
    _save(alignment_figure(runs), out, "alignment.png")
    for cell, members in seed_groups(runs).items():
        figures.append(
            Figured(
                f"spread-{file_stem(cell)}.png",
                f"{cell}: per-layer metrics over {len(members)} seeds (Fig. S4)",
                "per layer, the seeds' mean (line) and the band from the lowest to the highest seed",
            )
        )
        _save(spread_figure(cell, members), out, figures[-1].name)
    notes = []
    for run in runs:
        stem = file_stem(run.label)
        figures.append(
            Figured(
                f"layers-{stem}.png",
                f"{run.label}: per-layer metrics (Fig. S4)",
                "weight angle, gradient angle and norm ratio per layer, coloured by depth",
            )
        )
        _save(layers_figure(run), out, figures[-1].name)
        if run.summary.get("rule") == "bp":  # B is W: the scatter would be the diagonal
            notes.append(f"{run.label}: bp has no separate backward weights (B is W), so no W-versus-B scatter.")
            continue
        choice = scatter[run.label]
        if choice is None:
            notes.append(f"{run.label}: no weight snapshots in {run.path}, so no W-versus-B scatter.")
            continue
        layer_choice, step_choice = choice
        figures.append(
            Figured(
                f"weights-{stem}.png",
                f"{run.label}: forward vs backward weights (Fig. S3)",
                f"sampled (W, B) entry pairs of layers {', '.join(layer_choice)} at steps "
                f"{', '.join(map(str, step_choice))}; dotted: B = W",
            )
        )
        _save(weights_figure(run, layer_choice, step_choice), out, figures[-1].name)
    (out / "index.html").write_text(page(runs, figures, out, notes), encoding="utf-8")
    return figures
