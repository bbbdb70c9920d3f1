"""Run folders as the analyses read them.

A run folder holds ``metrics.jsonl`` (one JSON object per logged step, written by the ``jsonl``
logger), ``summary.json`` (at the end) and, when the trainer recorded them, weight snapshots
(``runtime/snapshots.py``). A ``nalign compare`` output folder holds ``comparison.json`` and one
run folder per rule. Per-layer metrics are named ``<metric>/<layer>`` (``runtime/logger.py``):
``angle`` (weight angle), ``grad_angle`` (gradient angle), ``norm_ratio``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from neural_alignment.core.errors import UserError
from neural_alignment.runtime import snapshots
from neural_alignment.runtime.logger import LAYER_SEPARATOR, METRICS_FILE, SUMMARY_FILE

COMPARISON_FILE = "comparison.json"  # written by nalign compare


def read_history(run_dir: str | Path) -> list[dict]:
    """The rows of ``<run_dir>/metrics.jsonl`` in order (a line a kill cut short is skipped)."""
    rows = []
    for line in (Path(run_dir) / METRICS_FILE).read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


@dataclass
class Run:
    """One run folder: its label in figures, its history (metrics rows) and summary."""

    path: Path
    label: str
    history: list[dict]
    summary: dict = field(default_factory=dict)

    def series(self, key: str) -> tuple[list[float], list[float]]:
        """(steps, values) of ``key`` over the rows that have it."""
        points = [(row["step"], row[key]) for row in self.history if row.get(key) is not None and "step" in row]
        return [p[0] for p in points], [p[1] for p in points]

    def layers(self, metric: str = "angle") -> list[str]:
        """The layers with a per-layer ``metric``, in the order logged (module order: input to output)."""
        prefix = metric + LAYER_SEPARATOR
        names: dict[str, None] = {}
        for row in self.history:
            for key in row:
                if key.startswith(prefix):
                    names[key[len(prefix) :]] = None
        return list(names)

    def snapshot_steps(self) -> list[int]:
        return snapshots.snapshot_steps(self.path)

    def snapshot(self, step: int):
        return snapshots.load_snapshot(self.path, step)


def _run(path: Path, label: str) -> Run:
    history = read_history(path)
    if not history:
        raise UserError(f"{path / METRICS_FILE} holds no records (did the run log a step?)")
    summary_path = path / SUMMARY_FILE
    summary = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.is_file() else {}
    return Run(path, label, history, summary)


def expand(path: str | Path) -> list[tuple[Path, str]]:
    """(run folder, label) for a run folder (label: its name) or a compare folder (one per rule, label: the rule)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} does not exist (give a run folder or a 'nalign compare' output folder)")
    if (path / METRICS_FILE).is_file():
        return [(path, path.name)]
    if (path / COMPARISON_FILE).is_file():
        rules = json.loads((path / COMPARISON_FILE).read_text(encoding="utf-8")).get("rules", [])
        found = [(path / rule, rule) for rule in rules if (path / rule / METRICS_FILE).is_file()]
        if not found:
            raise UserError(
                f"{path} is a compare folder but none of its rules' folders ({', '.join(rules)}) holds a {METRICS_FILE}"
            )
        return found
    raise UserError(
        f"{path} is not a run folder (no {METRICS_FILE}) nor a 'nalign compare' output folder (no {COMPARISON_FILE})"
    )


def load_runs(paths: Sequence[str | Path]) -> list[Run]:
    """The runs of ``paths`` (run or compare folders), labels made unique (a clash gets its parent's name)."""
    if not paths:
        raise UserError("give at least one run folder or 'nalign compare' output folder")
    found = [entry for path in paths for entry in expand(path)]
    labels = [label for _, label in found]
    unique = [f"{p.parent.name}/{label}" if labels.count(label) > 1 else label for p, label in found]
    unique = [f"{label}#{i}" if unique.count(label) > 1 else label for i, label in enumerate(unique, 1)]
    return [_run(path, label) for (path, _), label in zip(found, unique, strict=True)]


def file_stem(label: str) -> str:
    """``label`` made safe as a file name (letters, digits, '.', '_', '-')."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", label).strip("-") or "run"
