"""Running many recipes: the one path that search trials and comparison grids share.

A :class:`RunSpec` names a recipe, its overrides and the run folder. :func:`run_one` trains it
into that folder and returns its summary, and is idempotent on the folder:

- ``summary.json`` says ``finished``: the run is reused, nothing is trained again;
- a checkpoint is there (an interrupted run): training resumes from it (the spec may only
  change what a resume may, ``training.rundir.SAFE_ON_RESUME``, e.g. a longer run);
- otherwise a fresh run, replacing what a failed attempt left in the folder (the folder is the spec's).

A run that raises (a user error, a divergence, a bug) returns a summary with
``status`` ``failed`` or ``diverged`` and the error's text, so a search or a grid goes on.
:func:`run_all` runs a list of specs one after another (``local``); :func:`run_all_on_ray` runs
them as parallel Ray tasks (each holding its trial resources, ``grids.placement``) on the cluster
of ``grids.ray_cluster``, with the same contract; :func:`run_specs` picks one by backend name.
:func:`recorded` trains nothing and returns what the folders hold (a comparison redrawn from committed records).
"""

from __future__ import annotations

import json
import os
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from neural_alignment.core.errors import UserError
from neural_alignment.recipes.loader import load_recipe
from neural_alignment.runtime.logger import SUMMARY_FILE
from neural_alignment.training.divergence import TrainingDiverged
from neural_alignment.training.rundir import has_checkpoint

FINISHED = "finished"
NOT_RUN = "not run"  # the status of a run that a record-only comparison (no training) did not find finished


@dataclass(frozen=True)
class RunSpec:
    """One run: recipe ``name`` (or YAML path) with ``overrides``, trained into ``run_dir``."""

    name: str
    overrides: tuple[str, ...] = ()
    run_dir: Path = field(default_factory=Path)


def finished_summary(run_dir: str | os.PathLike) -> dict | None:
    """The summary of a finished run in ``run_dir``, else ``None``."""
    path = Path(run_dir) / SUMMARY_FILE
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return summary if summary.get("status") == FINISHED else None


def run_one(spec: RunSpec, placement: dict | None = None) -> dict:
    """Train ``spec`` (reusing a finished run, resuming an interrupted one); never raises for a failed run.

    The returned summary always has ``status``, ``seconds`` and ``started_at`` (the training's own, as
    ``summary.json`` records them, so a reused run reports when it trained; this call's where no run
    recorded them) and, on failure, ``error`` (one line for a user error or a
    divergence, the last traceback line otherwise); ``placement`` (where it runs: ``grids.placement``)
    is recorded in it and in ``summary.json``.
    """
    from neural_alignment.training.trainer import train

    started, started_at = time.perf_counter(), time.time()
    reused = finished_summary(spec.run_dir)
    if reused is not None:
        return {**reused, "reused": True}
    try:
        recipe = load_recipe(spec.name, list(spec.overrides))
        resume = has_checkpoint(spec.run_dir)
        result = train(recipe, spec.run_dir, resume=resume, overwrite=not resume, placement=placement)
        summary = dict(result.summary)
    except TrainingDiverged as exc:
        summary = {"status": "diverged", "error": str(exc)}
    except UserError as exc:
        summary = {"status": "failed", "error": str(exc)}
    except Exception as exc:
        last = traceback.format_exception_only(type(exc), exc)[-1].strip()
        summary = {"status": "failed", "error": last}
    summary = {"seconds": time.perf_counter() - started, "started_at": started_at, **summary}
    if placement is not None:
        summary["placement"] = placement
    return summary


def run_placed(spec: RunSpec) -> dict:
    """``run_one(spec)`` on a Ray worker, on the backend its assigned resources choose, its placement recorded."""
    from neural_alignment.grids.placement import placed

    overrides, here = placed(spec.name, spec.overrides)
    return run_one(replace(spec, overrides=overrides), placement=here)


def recorded(specs: Sequence[RunSpec]) -> list[dict]:
    """Every spec's finished summary (marked ``reused``) where its folder holds one, else ``{"status": NOT_RUN}``;
    nothing is trained."""
    return [
        {**summary, "reused": True} if (summary := finished_summary(spec.run_dir)) else {"status": NOT_RUN}
        for spec in specs
    ]


def run_all(specs: Sequence[RunSpec], on_done: Callable[[RunSpec, dict], None] | None = None) -> list[dict]:
    """Run ``specs`` one after another in this process; ``on_done(spec, summary)`` after each."""
    summaries = []
    for spec in specs:
        summary = run_one(spec)
        if on_done is not None:
            on_done(spec, summary)
        summaries.append(summary)
    return summaries


def run_all_on_ray(
    specs: Sequence[RunSpec],
    on_done: Callable[[RunSpec, dict], None] | None = None,
    num_cpus: int | None = None,
    resources: dict | None = None,
    shared: Path | None = None,
) -> list[dict]:
    """Run ``specs`` as Ray tasks (:func:`run_placed` each, holding ``resources``,
    default one CPU) on the cluster of :func:`~neural_alignment.grids.ray_cluster.ray_cluster`
    (``num_cpus``: a local cluster's size); ``on_done`` in the order runs finish; the summaries
    are returned in the order of ``specs``. A task whose worker dies (its node lost) is started
    again up to ``placement.RETRIES`` times (its run folder resumes from its checkpoint). Each task
    first checks that its node sees ``shared`` (the folder the driver reads), else fails with why."""
    from neural_alignment.grids import placement
    from neural_alignment.grids.ray_cluster import ray_cluster

    resources = placement.trial_resources(resources, "--trial-resources")
    token = placement.mark_shared(shared) if shared is not None else None

    def run(spec: RunSpec) -> dict:
        problem = placement.unseen_folder(shared, token) if shared is not None and token else None
        return {"status": "failed", "error": problem} if problem else run_placed(spec)

    with ray_cluster(num_cpus) as ray:
        remote = ray.remote(max_retries=placement.RETRIES, **placement.remote_options(resources))(run)
        pending = {remote.remote(spec): index for index, spec in enumerate(specs)}
        summaries: list[dict | None] = [None] * len(specs)
        while pending:
            (done,), _ = ray.wait(list(pending), num_returns=1)
            index = pending.pop(done)
            try:
                summary = ray.get(done)
            except Exception as exc:
                summary = {"status": "failed", "error": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"}
            summaries[index] = summary
            if on_done is not None:
                on_done(specs[index], summary)
    return [s for s in summaries if s is not None]  # all of them: the loop ran until none was pending


EXECUTORS: dict[str, Callable[..., list[dict]]] = {"local": run_all, "ray": run_all_on_ray}


def run_specs(
    specs: Sequence[RunSpec],
    backend: str = "local",
    on_done: Callable[[RunSpec, dict], None] | None = None,
    **ray_options,
) -> list[dict]:
    """Run ``specs`` with the executor named ``backend`` (``local`` or ``ray``; ``ray_options``:
    :func:`run_all_on_ray`'s ``resources`` and ``shared``)."""
    if backend not in EXECUTORS:
        raise UserError(f"unknown executor backend {backend!r}; valid: {', '.join(EXECUTORS)}")
    return EXECUTORS[backend](specs, on_done, **(ray_options if backend == "ray" else {}))
