"""``nalign compare``: train one recipe once per rule and compare the runs.

For each rule the recipe runs with ``rule.name=<rule>`` (its ``by_rule`` entry applies) into
``<out>/<rule>/``. The table has per rule: test accuracy, mean weight angle, mean gradient
angle (``recipes/probes.py``: propagated vs true gradient at each layer's input, on a fixed
held-out batch) and last-layer weight angle (degrees), mean norm ratio ||B||/||W||, and the median seconds per training step relative to
the ``bp`` run (or to the first rule when ``bp`` is not compared). The step times are measured
after training, on one batch, in interleaved rounds (every rule a few steps per round), so
that a change in machine load hits every rule alike; the rules share one dataset in memory
(each keeps only its model and optimizers for the timing). Written to ``<out>``:
``comparison.json``, ``comparison.md`` (the table) and ``comparison.png`` (accuracy and
angle curves). When the recipe's dataset cannot be loaded (e.g. Fashion-MNIST absent) the
comparison falls back to ``digits`` with a one-line notice.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
from torch.utils.data import default_collate

from neural_alignment.analysis.figures import plot_comparison
from neural_alignment.analysis.runs import read_history
from neural_alignment.core.errors import UserError
from neural_alignment.recipes.loader import load_recipe
from neural_alignment.recipes.build import build_data, data_key
from neural_alignment.recipes.rundir import default_run_dir
from neural_alignment.recipes.trainer import Trainer
from neural_alignment.registry import UnknownNameError, get_registry

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


def interleaved_step_seconds(trainers: dict[str, Trainer], rounds: int = TIMING_ROUNDS,
                             steps: int = TIMING_STEPS) -> dict[str, float]:
    """Median seconds per training step of each trainer on the same batch, timed in interleaved rounds."""
    first = next(iter(trainers.values()))
    x, y = default_collate([first.splits.train[i] for i in range(first.recipe.data.batch_size)])
    seconds: dict[str, list[float]] = {rule: [] for rule in trainers}
    for _ in range(rounds):
        for rule, trainer in trainers.items():
            seconds[rule] += trainer.time_steps(x, y, steps)
    return {rule: float(np.median(values)) for rule, values in seconds.items()}


def markdown_table(rows: list[dict], base: str) -> str:
    """The comparison as a Markdown table (also what is printed)."""
    headers = [title.format(base=base) for _, title, _ in COLUMNS]
    body = [[fmt.format(row[key]) if row.get(key) is not None else "-" for key, _, fmt in COLUMNS] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(headers)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in body]
    return "\n".join(lines)


def compare(name: str, rules: Sequence[str], overrides: Sequence[str] = (), out: str | Path | None = None) -> dict:
    """Train ``name`` once per rule; print and write the comparison; returns what ``comparison.json`` holds."""
    if not rules:
        raise UserError("compare needs at least one rule, e.g. --rules bp,fa,kp")
    for rule in rules:
        get_registry().get("rules", rule)  # an unknown rule fails before any training
    extra, notice = dataset_overrides(name, overrides)
    if notice:
        print(f"nalign: notice: {notice}", file=sys.stderr)
    # every rule's recipe (its by_rule entry and the overrides) is checked before any training
    recipes = {rule: load_recipe(name, [*overrides, *extra, f"rule.name={rule}"]) for rule in rules}
    out = Path(out) if out else default_run_dir(f"compare-{name}")
    rows, histories, trainers, datasets = [], {}, {}, {}
    for index, rule in enumerate(rules, 1):
        print(f"[{index}/{len(rules)}] training {name} with rule {rule}", file=sys.stderr, flush=True)
        started = time.perf_counter()
        key = data_key(recipes[rule])  # one dataset in memory for every rule that reads the same one
        if key not in datasets:
            datasets[key] = build_data(recipes[rule])
        trainers[rule] = Trainer(recipes[rule], out / rule, splits=datasets[key])
        result = trainers[rule].run()
        rows.append({"rule": rule, **result.summary, "wall_seconds": time.perf_counter() - started})
        histories[rule] = read_history(result.run_dir)
    print(f"timing {TIMING_ROUNDS} interleaved rounds of {TIMING_STEPS} steps per rule", file=sys.stderr, flush=True)
    timed = interleaved_step_seconds(trainers)
    base = "bp" if "bp" in rules else rules[0]
    for row in rows:
        row["timed_seconds_per_step"] = timed[row["rule"]]
        row["relative_step_time"] = timed[row["rule"]] / timed[base]
    table = markdown_table(rows, base)
    print(table)
    report = {"recipe": name, "dataset": rows[0]["dataset"], "rules": list(rules), "notice": notice,
              "overrides": list(overrides), "rows": rows}
    (out / "comparison.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "comparison.md").write_text(f"# nalign compare {name} ({report['dataset']})\n\n{table}\n")
    plot_comparison(histories, out / "comparison.png")
    print(f"comparison written to {out}/comparison.{{md,json,png}}")
    return report
