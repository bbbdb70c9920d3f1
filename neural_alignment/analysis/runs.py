"""Run folders as the analyses read them.

A run folder holds ``metrics.jsonl`` (one JSON object per logged step, written by the ``jsonl``
logger), ``summary.json`` (at the end) and, when the trainer recorded them, weight snapshots
(``runtime/snapshots.py``). A ``nalign compare`` output folder holds ``comparison.json`` and one
run folder per rule (a grid, ``--vary``/``--seeds``: per rule, value and seed). Per-layer metrics
are named ``<metric>/<layer>`` (``runtime/logger.py``): ``angle`` (weight angle), ``grad_angle``
(gradient angle), ``norm_ratio``.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
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
    summary = {}
    if summary_path.exists():
        try:
            summary = json.loads(summary_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            print(
                f"nalign: notice: {summary_path} is unreadable ({type(exc).__name__}); shown without it",
                file=sys.stderr,
            )
    return Run(path, label, history, summary if isinstance(summary, dict) else {})


def compare_entries(folder: Path) -> list[tuple[Path, str]]:
    """(run folder, label) of every run a ``nalign compare`` folder lists in its ``comparison.json``,
    whether or not it has a record yet. A one-run-per-rule comparison labels a run by its rule; a
    grid (``--vary``, ``--seeds``) by rule, varied value and seed, e.g. ``kp optim.task.lr=0.1 seed1``.
    A run's folder is found below ``folder`` (``<rule>[/<key>=<value>][/seed<seed>]``), wherever the
    comparison was run from or moved to."""
    path = folder / COMPARISON_FILE
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
        runs = report["runs"] if "runs" in report else [{"rule": rule} for rule in report["rules"]]
        vary, seeded = report.get("vary"), len(report.get("seeds") or ()) > 1
        entries = []
        for run in runs:
            depth = 1 + bool(vary) + seeded
            below = Path(*Path(run["run_dir"]).parts[-depth:]) if "run_dir" in run else Path(run["rule"])
            label = " ".join(
                [run["rule"], *([f"{vary['key']}={run['value']}"] if vary else []), *([f"seed{run['seed']}"] * seeded)]
            )
            entries.append((folder / below, label))
        return entries
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(
            f"{path} is unreadable or not a comparison's ({type(exc).__name__}: {exc}); "
            "run the comparison again into this folder (its finished runs are reused)"
        ) from None


def enclosing_comparison(path: Path) -> Path | None:
    """The ``nalign compare`` folder ``path`` is a run of (up to three levels up), or None."""
    for parent in list(path.resolve().parents)[:3]:
        if (parent / COMPARISON_FILE).is_file():
            return parent
    return None


def expand(path: str | Path) -> list[tuple[Path, str]]:
    """(run folder, label) for a run folder or a compare folder (each of its runs that has a record).

    A run folder is labelled by its name, or as its comparison labels it when it is a run of one
    (:func:`compare_entries`: a grid's leaf ``seed0`` is ``kp optim.task.lr=0.1 seed0``), also when
    a later comparison into the same folder (another ``--vary`` value) no longer lists it."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} does not exist (give a run folder or a 'nalign compare' output folder)")
    if not path.is_dir():
        raise UserError(f"{path} is a file; give a run folder or a 'nalign compare' output folder")
    if (path / METRICS_FILE).is_file():
        comparison = enclosing_comparison(path)
        if comparison is not None:
            with contextlib.suppress(UserError):  # a damaged comparison.json: the folder's own name
                labels = {p.resolve(): label for p, label in compare_entries(comparison)}
                below = path.resolve().relative_to(comparison.resolve()).parts  # <rule>[/<key>=<value>][/seed<k>]
                return [(path, labels.get(path.resolve(), " ".join(below)))]
        return [(path, path.name)]
    if (path / COMPARISON_FILE).is_file():
        entries = compare_entries(path)
        found = [(run, label) for run, label in entries if (run / METRICS_FILE).is_file() and read_history(run)]
        if found and len(found) < len(entries):
            missing = ", ".join(label for entry, label in entries if (entry, label) not in found)
            print(f"nalign: notice: {path}: no records (yet) of {missing}; shown without them", file=sys.stderr)
        if not found:
            raise UserError(
                f"{path} is a compare folder but none of its {len(entries)} run folders holds a {METRICS_FILE} "
                "(did every run fail before its first step?)"
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
