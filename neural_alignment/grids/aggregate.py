"""Aggregating a comparison grid across seeds: mean and standard error per (rule, value).

For each metric m over the n finished runs of one (rule, value) cell::

    mean = sum_i m_i / n,    sem = sqrt(sum_i (m_i - mean)^2 / (n - 1)) / sqrt(n)   (None when n < 2)

Runs that failed or diverged are counted (``failed``) and left out of the mean, as are runs a
record-only comparison did not find (``not_run``); a cell with no finished run has ``None`` for
every metric. The Markdown table prints ``mean ± sem`` (just the
mean for a single run) and, beside them, every finished run's test accuracy in seed order (so a
cell whose seeds split into modes shows it: a mean and s.e.m. alone hide it).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from neural_alignment.grids.executor import FINISHED, NOT_RUN
from neural_alignment.grids.grid import GridPoint

METRICS: tuple[tuple[str, str, str], ...] = (
    ("test_acc", "test acc", "{:.4f}"),
    ("mean_weight_angle", "mean angle", "{:.1f}"),
    ("mean_grad_angle", "mean grad angle", "{:.1f}"),
    ("last_weight_angle", "last-layer angle", "{:.1f}"),
    ("mean_norm_ratio", "norm ratio", "{:.2f}"),
)
METRIC_KEYS = tuple(key for key, _, _ in METRICS)


def mean_sem(values: Sequence[float]) -> tuple[float | None, float | None]:
    """(mean, standard error of the mean) of ``values``; sem is ``None`` for fewer than two values."""
    n = len(values)
    if n == 0:
        return None, None
    mean = sum(values) / n
    if n < 2:
        return mean, None
    variance = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(variance / n)


def aggregate(results: Iterable[tuple[GridPoint, dict]], metrics: Sequence[str] = METRIC_KEYS) -> list[dict]:
    """One row per (rule, value), in first-seen order: ``n``, ``failed``, ``not_run``, ``seeds``, per metric
    ``<metric>`` (the mean) and ``<metric>_sem``, and ``test_acc_runs``: each finished run's
    ``test_acc``, in seed order."""
    cells: dict[tuple[str, str | None], list[tuple[int, dict]]] = {}
    for point, summary in results:
        cells.setdefault((point.rule, point.value), []).append((point.seed, summary))
    rows = []
    for (rule, value), runs in cells.items():
        done = [s for _, s in runs if s.get("status") == FINISHED]
        not_run = sum(s.get("status") == NOT_RUN for _, s in runs)
        row: dict[str, Any] = {
            "rule": rule,
            "value": value,
            "n": len(done),
            "failed": len(runs) - len(done) - not_run,
            "not_run": not_run,
            "seeds": [seed for seed, _ in runs],
            "test_acc_runs": [s["test_acc"] for s in done if s.get("test_acc") is not None],
        }
        for metric in metrics:
            mean, sem = mean_sem([s[metric] for s in done if s.get(metric) is not None])
            row[metric], row[f"{metric}_sem"] = mean, sem
        rows.append(row)
    return rows


def cell(row: dict, key: str, fmt: str) -> str:
    """``mean ± sem`` of ``key`` in ``row`` (``-`` when missing)."""
    if row.get(key) is None:
        return "-"
    sem = row.get(f"{key}_sem")
    return fmt.format(row[key]) + ("" if sem is None else " ± " + fmt.format(sem))


def markdown(headers: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    """A Markdown table with padded columns."""
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(headers)]
    lines = [
        "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in body]
    return "\n".join(lines)


def grid_table(rows: Sequence[dict], vary_key: str | None) -> str:
    """The aggregated grid as Markdown: rule, the varied value, runs (n, failed, not run), mean ± sem per metric,
    then the test accuracy of each run (seed order)."""
    headers = [
        "rule",
        *([vary_key] if vary_key else []),
        "runs",
        *(title for _, title, _ in METRICS),
        "test acc per seed",
    ]
    body = []
    for row in rows:
        missing = [
            f"{row[key]} {words}" for key, words in (("failed", "failed"), ("not_run", "not run")) if row.get(key)
        ]
        runs = f"{row['n']}" + (f" ({', '.join(missing)})" if missing else "")
        body.append(
            [
                row["rule"],
                *([row["value"]] if vary_key else []),
                runs,
                *(cell(row, key, fmt) for key, _, fmt in METRICS),
                " ".join(f"{value:.4f}" for value in row["test_acc_runs"]) or "-",
            ]
        )
    return markdown(headers, body)
