"""``nalign compare``: train one recipe once per rule (and per seed and varied value) and compare.

Every run of the grid (``grids.grid``: rule x ``--vary`` value x ``--seeds``) goes through the
executor (``grids.executor``): one after another, or as parallel tasks on a Ray cluster
(``backend="ray"``). A run already finished in its folder is reused and an interrupted one
resumes, so an interrupted comparison continues where it stopped. Every rule's recipe is
loaded before any training, so a bad override fails first. When the recipe's dataset cannot be
loaded (e.g. Fashion-MNIST absent) the comparison falls back to ``digits`` with a one-line notice.

One run per rule (no ``--vary``, one seed): the table has per rule test accuracy, mean weight
angle, mean gradient angle (``training/probes.py``: propagated vs true gradient at each layer's
input, on a fixed held-out batch) and last-layer weight angle (degrees), mean norm ratio
||B||/||W||, and the median seconds per
training step relative to the ``bp`` run (or to the first rule); a second table has, per
aligned layer (rows, in module order) and rule (columns), the latest weight angle and gradient
angle, ``weight / grad`` in degrees (an attention's ``<attn>.in_proj`` and ``<attn>.out_proj``
among them). The step times are measured
after training (each run rebuilt from its checkpoint), on one batch, in interleaved rounds
(every rule a few steps per round), so a change in machine load hits every rule alike; the
trainers held for the timing share one dataset in memory (each keeps only its model and
optimizers). The figure shows accuracy and angle over training.

A grid (``--vary`` or ``--seeds`` above 1): the table has per rule and value the mean ± standard
error across seeds of those metrics (``grids.aggregate``), and the figure each against the
varied value, one line per rule, with error bars (without ``--vary``: the curves of the first seed).

``train=False`` (``--no-train``) trains nothing: the table and figure of the runs already finished
in ``out`` (e.g. records committed to a repository, without checkpoints), the others counted as not
run; the one-run-per-rule table then times only runs whose checkpoint is there.

Written to ``<out>``: ``comparison.json`` (the rows, and every run's summary; ``failed``: how many
runs did not finish), ``comparison.md`` (the table) and ``comparison.png``. The comparison holds
the lock of ``<out>`` (``runtime.folder_lock``) while it runs, so a second ``compare`` into the
same folder is refused in one line before it trains anything; ``nalign compare`` exits 1 when a
run of the grid failed (each named on stderr).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import default_collate

from neural_alignment.analysis.figures import plot_comparison, plot_grid
from neural_alignment.analysis.runs import read_history
from neural_alignment.core.errors import UserError
from neural_alignment.grids.aggregate import aggregate, grid_table, markdown
from neural_alignment.grids.executor import FINISHED, NOT_RUN, RunSpec, recorded, run_specs
from neural_alignment.grids.grid import GridPoint, Vary, grid_points, grid_specs, parse_vary
from neural_alignment.recipes.loader import load_recipe
from neural_alignment.registry import UnknownNameError, get_registry
from neural_alignment.runtime.atomic import write_text_atomically
from neural_alignment.runtime.folder_lock import FolderLock, create_folder
from neural_alignment.runtime.logger import METRICS_FILE
from neural_alignment.training.build import build_data, data_key
from neural_alignment.training.rundir import default_run_dir, has_checkpoint
from neural_alignment.training.trainer import Trainer

FALLBACK_DATASET = "digits"
TIMING_ROUNDS, TIMING_STEPS = 5, 4
COLUMNS = (
    ("rule", "rule", "{}"),
    ("test_acc", "test acc", "{:.4f}"),
    ("mean_weight_angle", "mean angle", "{:.1f}"),
    ("mean_grad_angle", "mean grad angle", "{:.1f}"),
    ("last_weight_angle", "last-layer angle", "{:.1f}"),
    ("mean_norm_ratio", "norm ratio", "{:.2f}"),
    ("relative_step_time", "time/step vs {base}", "{:.2f}x"),
)


def dataset_overrides(name: str, overrides: Sequence[str]) -> tuple[list[str], str | None]:
    """Extra overrides and a notice: ``data.dataset=digits`` when the recipe's dataset cannot load."""
    recipe = load_recipe(name, overrides)
    try:
        build_data(recipe)
        return [], None
    except UnknownNameError:
        raise
    except UserError as exc:
        notice = f"{recipe.data.dataset} is unavailable ({exc}); comparing on {FALLBACK_DATASET} instead"
        return [f"data.dataset={FALLBACK_DATASET}", "data.root=null", "data.options={}"], notice


def interleaved_step_seconds(
    trainers: dict[str, Trainer], rounds: int = TIMING_ROUNDS, steps: int = TIMING_STEPS
) -> dict[str, float]:
    """Median seconds per training step of each trainer on the same batch, timed in interleaved rounds."""
    first = next(iter(trainers.values()))
    x, y = default_collate([first.splits.train[i] for i in range(first.recipe.data.batch_size)])
    seconds: dict[str, list[float]] = {rule: [] for rule in trainers}
    for _ in range(rounds):
        for rule, trainer in trainers.items():
            seconds[rule] += trainer.time_steps(x, y, steps)
    return {rule: float(np.median(values)) for rule, values in seconds.items()}


def markdown_table(rows: list[dict], base: str) -> str:
    """The one-run-per-rule comparison as a Markdown table (also what is printed)."""
    headers = [title.format(base=base) for _, title, _ in COLUMNS]
    body = [[fmt.format(row[key]) if row.get(key) is not None else "-" for key, _, fmt in COLUMNS] for row in rows]
    return markdown(headers, body)


def latest_layer_angles(history: list[dict]) -> dict[str, dict[str, float]]:
    """{layer: {"angle": latest weight angle, "grad_angle": latest gradient angle}} from a run's
    metric rows (``angle/<layer>``, ``grad_angle/<layer>``), layers in the order first logged."""
    layers: dict[str, dict[str, float]] = {}
    for row in history:
        for key, value in row.items():
            metric, _, layer = key.partition("/")
            if metric in ("angle", "grad_angle") and layer and value is not None:
                layers.setdefault(layer, {})[metric] = value
    return layers


def layer_table(histories: dict[str, list[dict]]) -> str:
    """Per layer (rows) and rule (columns): ``weight / grad`` angle at the end of training ("-" if not logged)."""
    angles = {rule: latest_layer_angles(history) for rule, history in histories.items()}
    layers = list(dict.fromkeys(layer for per_rule in angles.values() for layer in per_rule))

    def cell(values: dict[str, float] | None) -> str:
        values = values or {}
        return " / ".join(f"{values[m]:.1f}" if m in values else "-" for m in ("angle", "grad_angle"))

    headers = ["layer (weight / grad angle)", *angles]
    return markdown(headers, [[layer, *(cell(angles[rule].get(layer)) for rule in angles)] for layer in layers])


def plan(
    name: str, rules: Sequence[str], overrides: Sequence[str], seeds: int, vary: Vary | None, out: Path
) -> tuple[list[GridPoint], list[RunSpec]]:
    """The grid's points and run specs; every run's recipe is loaded (and so checked) here, before any training."""
    if not rules:
        raise UserError("compare needs at least one rule, e.g. --rules bp,fa,kp")
    if seeds < 1:
        raise UserError(f"--seeds must be at least 1, got {seeds}")
    for rule in rules:
        get_registry().get("rules", rule)  # an unknown rule fails before any training
    seed0 = load_recipe(name, overrides).train.seed
    points = grid_points(rules, [seed0 + k for k in range(seeds)], vary)
    specs = grid_specs(name, overrides, points, vary, out, seeded=seeds > 1)
    for spec in specs:
        load_recipe(spec.name, spec.overrides)
    return points, specs


def run_grid(specs: Sequence[RunSpec], backend: str, **ray_options) -> list[dict]:
    """Train (or reuse, or resume) every spec (``ray_options``: ``executor.run_all_on_ray``'s);
    prints one progress line per run as it ends."""
    total, done = len(specs), []

    def progress(spec: RunSpec, summary: dict) -> None:
        done.append(spec)
        how = "reused" if summary.get("reused") else f"{summary['status']} in {summary.get('seconds', 0):.1f}s"
        error = f": {summary['error']}" if summary.get("error") else ""
        print(f"[{len(done)}/{total}] {spec.run_dir}: {how}{error}", file=sys.stderr, flush=True)

    return run_specs(specs, backend, on_done=progress, **ray_options)


def single_run_report(results: list[tuple[GridPoint, dict]], specs: Sequence[RunSpec]) -> tuple[str, list[dict], dict]:
    """The one-run-per-rule table (with interleaved step times), its rows, and the histories to draw."""
    rows, trainers, histories, datasets = [], {}, {}, {}
    for (point, summary), spec in zip(results, specs, strict=True):
        rows.append({"rule": point.rule, **summary})
        if (spec.run_dir / METRICS_FILE).is_file():  # a run that failed before training has no record
            histories[point.rule] = read_history(spec.run_dir)
        if summary.get("status") == FINISHED and has_checkpoint(spec.run_dir):  # rebuilt for the step times
            recipe = load_recipe(spec.name, spec.overrides)
            key = data_key(recipe)  # one dataset in memory for every rule that reads the same one
            if key not in datasets:
                datasets[key] = build_data(recipe)
            trainers[point.rule] = Trainer(recipe, spec.run_dir, resume=True, splits=datasets[key])
    rules = [row["rule"] for row in rows]
    base = "bp" if "bp" in trainers else next(iter(trainers), rules[0])
    if trainers:
        print(
            f"timing {TIMING_ROUNDS} interleaved rounds of {TIMING_STEPS} steps per rule", file=sys.stderr, flush=True
        )
        timed = interleaved_step_seconds(trainers)
        for row in rows:
            if row["rule"] in timed:
                row["timed_seconds_per_step"] = timed[row["rule"]]
                row["relative_step_time"] = timed[row["rule"]] / timed[base]
    table = markdown_table(rows, base)
    if any(latest_layer_angles(history) for history in histories.values()):
        table += "\n\n" + layer_table(histories)
    return table, rows, histories


def compare(
    name: str,
    rules: Sequence[str],
    overrides: Sequence[str] = (),
    out: str | Path | None = None,
    seeds: int = 1,
    vary: str | Vary | None = None,
    backend: str = "local",
    trial_resources: dict | None = None,
    train: bool = True,
) -> dict:
    """Train ``name`` for every rule x ``vary`` value x seed (``train=False``: only read what ``out``
    holds); print and write the comparison (see the module docstring; ``trial_resources``: what each
    run holds on Ray, ``grids.placement``); returns what ``comparison.json`` holds."""
    vary = parse_vary(vary) if isinstance(vary, str) else vary
    if not train and out is None:
        raise UserError("--no-train reads the runs of an existing comparison: give its folder with --out")
    # a record-only comparison loads no data: the run folders do not depend on the dataset fallback
    extra, notice = dataset_overrides(name, overrides) if train else ([], None)
    if notice:
        print(f"nalign: notice: {notice}", file=sys.stderr)
    out = Path(out) if out else default_run_dir(f"compare-{name}")
    points, specs = plan(name, rules, [*overrides, *extra], seeds, vary, out)
    create_folder(out, "comparison folder", "a folder")
    in_use = (
        f"comparison folder {out} is in use by another nalign compare (it holds the folder's lock); "
        "wait for it to end (its finished runs are then reused) or give another --out"
    )
    ray_options = {"resources": trial_resources, "shared": out} if backend == "ray" else {}
    if not train:  # reads the runs, trains and removes nothing: a grid still running may hold the lock
        return write_comparison(name, rules, overrides, out, seeds, vary, notice, points, specs, backend, None)
    with FolderLock(out, in_use):
        return write_comparison(name, rules, overrides, out, seeds, vary, notice, points, specs, backend, ray_options)


def write_comparison(
    name: str,
    rules: Sequence[str],
    overrides: Sequence[str],
    out: Path,
    seeds: int,
    vary: Vary | None,
    notice: str | None,
    points: list[GridPoint],
    specs: list[RunSpec],
    backend: str,
    ray_options: dict | None,
) -> dict:
    """Run the planned grid (``ray_options`` None: train nothing, read what the folders hold) and write
    ``comparison.{json,md,png}`` (a caller that trains holds ``out``'s lock)."""
    summaries = recorded(specs) if ray_options is None else run_grid(specs, backend, **ray_options)
    results = list(zip(points, summaries, strict=True))
    failed = [
        (spec, s) for spec, (_, s) in zip(specs, results, strict=True) if s.get("status") not in (FINISHED, NOT_RUN)
    ]
    not_run = sum(s.get("status") == NOT_RUN for _, s in results)
    report: dict[str, Any] = {
        "recipe": name,
        "dataset": next((s["dataset"] for _, s in results if s.get("dataset")), None),
        "rules": list(rules),
        "seeds": sorted({p.seed for p in points}),
        "notice": notice,
        "overrides": list(overrides),
        "vary": {"key": vary.key, "values": list(vary.values)} if vary else None,
        "failed": len(failed),
        "runs": [
            {"rule": p.rule, "value": p.value, "seed": p.seed, "run_dir": str(spec.run_dir), **summary}
            for (p, summary), spec in zip(results, specs, strict=True)
        ],
    }
    if seeds == 1 and vary is None:
        table, report["rows"], histories = single_run_report(results, specs)
        plot_comparison(histories, out / "comparison.png")
    else:
        report["rows"] = aggregate(results)
        table = grid_table(report["rows"], vary.key if vary else None)
        if vary:
            plot_grid(report["rows"], vary.key, out / "comparison.png")
        else:
            first = min(p.seed for p in points)
            plot_comparison(
                {
                    p.rule: read_history(spec.run_dir)
                    for p, spec in zip(points, specs, strict=True)
                    if p.seed == first and (spec.run_dir / METRICS_FILE).is_file()
                },
                out / "comparison.png",
            )
    print(table)
    for spec, summary in failed:
        print(f"nalign: warning: {spec.run_dir} {summary['status']}: {summary.get('error', '')}", file=sys.stderr)
    if not_run:
        print(
            f"nalign: {not_run} of {len(specs)} runs not finished in {out} (not trained: --no-train)", file=sys.stderr
        )
    write_text_atomically(out / "comparison.json", json.dumps(report, indent=2) + "\n")
    title = f"nalign compare {name} ({report['dataset']})" + (f", {seeds} seeds" if seeds > 1 else "")
    write_text_atomically(out / "comparison.md", f"# {title}\n\n{table}\n")
    print(f"comparison written to {out}/comparison.{{md,json,png}}")
    return report
