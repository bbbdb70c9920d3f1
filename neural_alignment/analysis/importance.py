"""Metaparameter importance (the appendix's B.4, Fig. S2): how much each categorical choice moves the score.

For a categorical key k (a ``choice`` of the search space) and each value v it took, over the
trials that finished with a score: ``mean`` of the scores, ``n`` and ``sem`` = std (ddof 1) /
sqrt(n) (``nan`` for n = 1). The key's ``effect`` = max over v of mean - min over v of mean;
keys are ranked by effect, largest first (a key seen with one value only has effect 0).

:func:`importance_figure` draws a panel per key (mean per value, s.e.m. error bars), in rank
order, as Fig. S2 does; :func:`scores_figure` the score of each trial against its number (the
``trial`` of its record, from 0), with the best so far; :func:`values_figure` the score, and the
mean weight angle, of each trial against each continuous value searched (a search over one
weight is read there). A figure with nothing to draw is not made (``None``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


@dataclass(frozen=True)
class ValueStats:
    value: object
    n: int
    mean: float
    sem: float


@dataclass(frozen=True)
class KeyImportance:
    key: str
    effect: float
    values: tuple[ValueStats, ...]


def value_stats(value: object, scores: Sequence[float]) -> ValueStats:
    n = len(scores)
    mean = sum(scores) / n
    sem = math.sqrt(sum((s - mean) ** 2 for s in scores) / (n - 1) / n) if n > 1 else math.nan
    return ValueStats(value, n, mean, sem)


def importance(records: Sequence[dict], keys: Sequence[str]) -> list[KeyImportance]:
    """Per key of ``keys``, the score's mean and s.e.m. per value over ``records`` with a score; ranked by effect."""
    scored = [r for r in records if r.get("score") is not None]
    ranked = []
    for key in keys:
        groups: dict[str, tuple[object, list[float]]] = {}
        for record in scored:
            if key in record["values"]:
                value = record["values"][key]
                groups.setdefault(repr(value), (value, []))[1].append(record["score"])
        if not groups:
            continue
        stats = tuple(value_stats(value, scores) for value, scores in sorted(groups.values(), key=lambda g: str(g[0])))
        means = [s.mean for s in stats]
        ranked.append(KeyImportance(key, max(means) - min(means), stats))
    return sorted(ranked, key=lambda k: -k.effect)


def importance_table(ranked: Sequence[KeyImportance], metric: str) -> str:
    """A Markdown table: rank, key, effect, then per value n, mean and s.e.m. of ``metric``."""
    lines = [f"| rank | key | effect | value | n | mean {metric} | s.e.m. |", "|---|---|---|---|---|---|---|"]
    for rank, item in enumerate(ranked, 1):
        for i, s in enumerate(item.values):
            first = i == 0
            lines.append(
                f"| {rank if first else ''} | {item.key if first else ''} | "
                f"{f'{item.effect:.4f}' if first else ''} | {s.value} | {s.n} | {s.mean:.4f} | "
                f"{'' if math.isnan(s.sem) else f'{s.sem:.4f}'} |"
            )
    return "\n".join(lines)


def importance_figure(ranked: Sequence[KeyImportance], metric: str) -> Figure | None:
    """One bar panel per key (rank order): mean ``metric`` per value with s.e.m. error bars; ``None`` without keys."""
    if not ranked:
        return None
    columns = min(4, max(1, len(ranked)))
    rows = max(1, math.ceil(len(ranked) / columns))
    figure = Figure(figsize=(3.2 * columns, 2.6 * rows), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, columns, squeeze=False).flatten()
    for ax, item in zip(
        axes, ranked, strict=False
    ):  # the grid may hold more panels than keys; the rest are hidden below
        labels = [str(s.value) for s in item.values]
        errors = [0.0 if math.isnan(s.sem) else s.sem for s in item.values]
        ax.bar(labels, [s.mean for s in item.values], yerr=errors, capsize=3, color="C0")
        ax.set_title(f"{item.key} (effect {item.effect:.3f})", fontsize="small")
        ax.set_ylabel(metric, fontsize="small")
        ax.tick_params(labelsize="x-small")
    for ax in axes[len(ranked) :]:
        ax.set_visible(False)
    return figure


def trial_number(record: dict, position: int) -> int:
    """A record's trial number: its ``trial`` (local searches count from 0), else its position (Ray's ids are names)."""
    return record["trial"] if isinstance(record.get("trial"), int) else position


def scores_figure(records: Sequence[dict], metric: str, goal: str) -> Figure:
    """The score of each trial against its number (:func:`trial_number`) and the best so far; failed
    trials marked at the bottom."""
    figure = Figure(figsize=(6, 3.5), layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    ordered = sorted(enumerate(records), key=lambda item: trial_number(item[1], item[0]))
    numbers = [trial_number(r, i) for i, r in ordered]
    scores = [r.get("score") for _, r in ordered]
    done = [(n, s) for n, s in zip(numbers, scores, strict=True) if s is not None]
    if done:
        ax.plot(*zip(*done, strict=True), "o", color="C0", label="trial")
        best, running = [], None
        for n, s in done:
            running = s if running is None else (max(running, s) if goal == "max" else min(running, s))
            best.append((n, running))
        ax.step(*zip(*best, strict=True), where="post", color="C1", label="best so far")
    failed = [n for n, s in zip(numbers, scores, strict=True) if s is None]
    if failed:
        bottom = min((s for _, s in done), default=0.0)
        ax.plot(failed, [bottom] * len(failed), "x", color="C3", label="failed")
    ax.set_xlabel("trial (as trials.jsonl numbers it)")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return figure


ANGLE = "mean_weight_angle"


def values_figure(records: Sequence[dict], keys: dict[str, bool], metric: str) -> Figure | None:
    """Per continuous key of ``keys`` (key -> log scale) a column: ``metric`` (top) and the mean
    weight angle (bottom, when recorded) of each scored trial against its value; ``None`` when no
    scored trial has a value of any of them."""
    scored = [r for r in records if r.get("score") is not None]
    drawn = [k for k in keys if any(isinstance(r["values"].get(k), (int, float)) for r in scored)]
    if not drawn:
        return None
    angles = any(ANGLE in r for r in scored)
    rows = 2 if angles else 1
    figure = Figure(figsize=(3.6 * len(drawn), 2.8 * rows), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, len(drawn), squeeze=False)
    for column, key in enumerate(drawn):
        points = [r for r in scored if isinstance(r["values"].get(key), (int, float))]
        for row, (name, label) in enumerate([("score", metric), (ANGLE, "mean weight angle (degrees)")][:rows]):
            ax = axes[row][column]
            pairs = sorted((r["values"][key], r[name]) for r in points if r.get(name) is not None)
            if pairs:
                ax.plot(*zip(*pairs, strict=True), "o-", color=f"C{row}", markersize=4, linewidth=0.8)
            if keys[key]:
                ax.set_xscale("log")
            ax.set_xlabel(key, fontsize="small")
            ax.set_ylabel(label, fontsize="small")
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize="x-small")
    return figure


def save(figure: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=120)
    return path
