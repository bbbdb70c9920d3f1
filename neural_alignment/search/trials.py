"""``nalign search``: hyperopt's TPE over a recipe's ``search.space``, each trial an ordinary run.

A search folder DIR holds:

- ``search.json``: the plan (recipe, overrides, number of trials, backend, seed), for ``--resume``;
- ``trials/<trial>/``: one run folder per trial, trained by ``grids.executor.run_one`` (so
  ``nalign run --resume`` works on it), and beside it ``trials/<trial>.json`` (the values it was
  given: a search resumed after a kill in the middle of a trial resumes that trial's run folder
  from its checkpoint when the values are the same);
- ``trials.jsonl``: a line per finished trial: ``trial``, ``values`` (the sampled values, a
  conditional choice by its branch index), ``overrides`` (the recipe keys set), ``score``
  (``search.metric``; null when the trial failed), ``status``, ``error``, ``seconds``, the
  validation and alignment metrics, ``run_dir``;
- ``best.yaml`` (the base recipe with the best trial's values, runnable with ``nalign run``) and
  ``summary.md`` (the trials table, best first), written at the end.

The objective is ``search.metric`` of the trial's summary, maximised when ``search.goal`` is
``max``. TPE minimises ``loss`` = -score (max) or score (min); a failed or diverged trial gets
``WORST_LOSS``, so TPE learns to avoid the regions that fail, and the search goes on. A search
never reads the test set: ``search.metric`` may not be a ``test_*`` metric, and no ``test_*``
value is copied into ``trials.jsonl``.

Backends: ``local`` (:func:`search_local`, ``hyperopt.fmin`` one trial at a time, the hyperopt
``Trials`` pickled in DIR after each; TPE's suggestion for trial t is seeded by (seed, t), so a
resumed search re-suggests an interrupted trial identically and resumes its run folder) and
``ray`` (``search.on_ray``).
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from neural_alignment.core.errors import UserError
from neural_alignment.grids.executor import FINISHED, RunSpec, run_one
from neural_alignment.recipes.loader import load_recipe, to_dict
from neural_alignment.runtime.atomic import write_text_atomically
from neural_alignment.search.space import Sample, hyperopt_space, representative_points, resolve

PLAN = "search.json"
TRIALS = "trials.jsonl"
HYPEROPT_TRIALS = "trials.pkl"
TRIAL_FOLDERS = "trials"
BEST = "best.yaml"
TABLE = "summary.md"
WORST_LOSS = 1e12
"""The loss TPE is told for a failed or diverged trial (worse than any real score)."""
RECORDED_METRICS = (
    "val_loss",
    "val_acc",
    "val_top5",
    "mean_weight_angle",
    "last_weight_angle",
    "mean_norm_ratio",
    "steps",
    "started_at",
    "placement",
)
"""Summary values copied into ``trials.jsonl`` beside the score (never a ``test_*`` one); ``placement``
and ``started_at``: where (a Ray node) and when the trial trained."""


@dataclass
class SearchPlan:
    """What a search runs: recipe ``recipe`` (a name or an absolute YAML path) with ``overrides``,
    ``max_evals`` trials, on ``backend`` with ``parallelism`` trials at a time, TPE seeded by ``seed``."""

    recipe: str
    overrides: list[str] = field(default_factory=list)
    max_evals: int = 0
    backend: str = "local"
    parallelism: int = 1
    seed: int = 0

    def load(self):
        return load_recipe(self.recipe, self.overrides)

    def save(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        (out / PLAN).write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def read(cls, out: Path) -> SearchPlan:
        try:
            return cls(**json.loads((Path(out) / PLAN).read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError) as exc:
            raise UserError(
                f"cannot resume: {Path(out) / PLAN} is missing or unreadable ({exc}); give the folder a search wrote"
            ) from None


@dataclass(frozen=True)
class Objective:
    """``search.metric``, ``search.goal`` and the space, read from the recipe and checked."""

    space: dict
    metric: str
    goal: str
    startup_trials: int
    name: str
    wandb: bool

    @classmethod
    def of(cls, recipe) -> Objective:
        search = recipe.search
        space = to_dict(search.space, resolve=True)
        if not space:
            raise UserError(f"recipe {recipe.name!r} has no search.space to search; see the search-* recipes")
        check_metric(search.metric, recipe.data.val_split)  # the schema checks goal and startup_trials
        hyperopt_space(space)  # checks every entry
        return cls(space, search.metric, search.goal, search.startup_trials, recipe.name, "wandb" in recipe.log.loggers)

    def loss(self, record: dict) -> float:
        """What TPE minimises for ``record``: -score (goal max), score (min), WORST_LOSS if it failed."""
        score = record.get("score")
        if score is None or not math.isfinite(score):
            return WORST_LOSS
        return -score if self.goal == "max" else score

    def better(self, a: dict, b: dict | None) -> bool:
        """Whether record ``a`` beats ``b`` (``None``: no best yet)."""
        return a.get("score") is not None and (b is None or self.loss(a) < self.loss(b))


def check_metric(metric: str, val_split) -> None:
    """A search chooses on validation data: a ``test_*`` metric is refused, a ``val_*`` one needs ``data.val_split``."""
    if metric.startswith("test_"):
        raise UserError(
            f"search.metric={metric!r} reads the test set; a search chooses on the validation "
            "split: use val_acc or val_loss (with data.val_split)"
        )
    if metric.startswith("val_") and val_split is None:
        raise UserError(f"search.metric={metric!r} needs a validation set: set data.val_split (e.g. 0.1)")


def check_space_fits(plan: SearchPlan, space: dict) -> None:
    """Before any trial: the recipe loads with what the space sets (one point per branch of each
    conditional choice, each distribution at its middle, ``search.space.representative_points``),
    so a key the recipe does not have is one ``UserError`` naming it rather than a failure of every trial."""
    for point in representative_points(space):
        sample = resolve(space, point)
        try:
            load_recipe(plan.recipe, [*plan.overrides, *(override(k, v) for k, v in sample.overrides.items())])
        except UserError as exc:
            raise UserError(f"search.space sets what recipe {plan.recipe!r} cannot take: {exc}") from None


def override(key: str, value: Any) -> str:
    """``key=value`` as the recipe loader parses it (JSON is YAML flow syntax)."""
    return f"{key}={json.dumps(value)}"


def trial_marker(run_dir: Path) -> Path:
    """``trials/<trial>.json``, beside the trial's run folder: the values it was given. Outside the
    folder, so a fresh run that empties its folder (``run_one`` replacing a failed attempt) keeps it."""
    return run_dir.with_name(f"{run_dir.name}.json")


def run_trial(
    plan: SearchPlan,
    objective: Objective,
    sample: Sample,
    run_dir: Path,
    trial,
    run: Callable[[RunSpec], dict] = run_one,
) -> dict:
    """Train one trial into ``run_dir`` with ``run`` (``run_one``; on Ray ``run_placed``) and return
    its ``trials.jsonl`` record (never raises for a failed run).

    A ``run_dir`` left by another suggestion (its marker, :func:`trial_marker`, differs or is
    missing) is cleared first; one left by this suggestion is reused or resumed by ``run_one``.
    """
    given = {"values": sample.values, "overrides": sample.overrides}
    marker = trial_marker(run_dir)
    if run_dir.exists() and read_marker(marker) != given:
        shutil.rmtree(run_dir)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(marker, json.dumps(given))
    overrides = [*plan.overrides, *(override(k, v) for k, v in sample.overrides.items())]
    if objective.wandb:
        overrides.append(override("log.options.wandb.group", run_dir.parent.parent.name))
    return trial_record(objective, trial, sample, run(RunSpec(plan.recipe, tuple(overrides), run_dir)), run_dir.name)


def trial_record(objective: Objective, trial, sample: Sample, summary: dict, folder: str) -> dict:
    """The ``trials.jsonl`` record of ``trial`` given ``sample``, from its run's ``summary``."""
    given = {"values": sample.values, "overrides": sample.overrides}
    record = {
        "trial": trial,
        **given,
        "score": None,
        "status": summary.get("status"),
        "error": summary.get("error"),
        "seconds": summary.get("seconds"),
        "run_dir": f"{TRIAL_FOLDERS}/{folder}",
    }
    record.update({k: summary[k] for k in RECORDED_METRICS if k in summary})
    if record["status"] == FINISHED:
        if objective.metric not in summary:
            record.update(
                status="failed",
                error=f"search.metric {objective.metric!r} is not in the run's summary "
                f"(it has {', '.join(k for k in summary if not k.startswith('test_'))})",
            )
        else:
            record["score"] = summary[objective.metric]
    return record


def read_marker(path: Path) -> dict | None:
    """The values a trial marker holds; ``None`` when it is missing or damaged (the trial then starts afresh)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def notice(text: str) -> None:
    """A one-line notice on stderr (what was found damaged, and what was done about it)."""
    print(f"nalign: notice: {text}", file=sys.stderr, flush=True)


def read_records(path: Path, keep_damaged: bool = False) -> list[dict]:
    """The records of ``trials.jsonl`` at ``path`` (none when it is missing), read tolerantly.

    A line that is not a JSON record with a ``trial`` (a kill or a full disk cut it short, an edit
    broke it) is skipped with a notice naming the file and the line; the trial it recorded is
    simply run again. ``keep_damaged`` (a search about to rewrite the file) first copies the file
    as it was to ``trials.jsonl.damaged``, so nothing is lost.
    """
    if not path.exists():
        return []
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise UserError(
            f"cannot read {path}: {exc.strerror or exc}; move it aside to start its records afresh"
        ) from None
    records, bad = [], []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or "trial" not in record:
                raise ValueError("not a trial record")
            records.append(record)
        except ValueError:
            bad.append(number)
    if bad:
        kept = ""
        if keep_damaged:
            damaged = path.with_name(f"{path.name}.damaged")
            shutil.copyfile(path, damaged)
            kept = f"; the file as it was is kept as {damaged}"
        lines = ", ".join(map(str, bad))
        notice(f"{path}: skipped unreadable line(s) {lines} (cut short or edited); their trials run again{kept}")
    return records


class TrialLog:
    """``trials.jsonl``: the records by trial, rewritten whole (atomically) at each new one, and the
    progress line per finished trial (its values, its score, the best so far)."""

    def __init__(self, out: Path, objective: Objective, total: int, echo: Callable[[str], None] = print):
        self.path, self.objective, self.total, self.echo = out / TRIALS, objective, total, echo
        self.records: dict[str, dict] = {}
        self.reload(keep_damaged=True)

    def reload(self, keep_damaged: bool = False) -> None:
        """Read the records ``trials.jsonl`` holds (another process may have added some), by :func:`read_records`."""
        for record in read_records(self.path, keep_damaged):
            self.records[str(record["trial"])] = record

    def __contains__(self, trial) -> bool:
        return str(trial) in self.records

    def best(self) -> dict | None:
        best = None
        for record in self.records.values():
            if self.objective.better(record, best):
                best = record
        return best

    def add(self, record: dict) -> None:
        self.records[str(record["trial"])] = record
        write_text_atomically(self.path, "".join(json.dumps(r) + "\n" for r in self.records.values()))
        self.echo(self.progress_line(record))

    def progress_line(self, record: dict) -> str:
        values = "  ".join(f"{k}={format_value(v)}" for k, v in record["values"].items())
        outcome = (
            f"{self.objective.metric} {record['score']:.4f}"
            if record["score"] is not None
            else f"{record['status']}: {record.get('error')}"
        )
        best = self.best()
        best_text = f"best {best['score']:.4f} (trial {best['trial']})" if best else "best: none yet"
        return (
            f"[search] trial {record['trial']} ({len(self.records)}/{self.total}, {record.get('seconds') or 0:.0f} s)"
            f"  {values}  -> {outcome};  {best_text}"
        )


def format_value(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
