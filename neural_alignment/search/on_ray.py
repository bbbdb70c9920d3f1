"""``nalign search --backend ray``: Ray Tune with hyperopt's TPE (``HyperOptSearch``) as the searcher.

At most ``--parallelism`` trials run at once (a ``ConcurrencyLimiter``), each on one CPU of a
worker; the cluster is ``RAY_ADDRESS``'s or a local one of ``parallelism`` CPUs
(``grids.ray_cluster``). Each trial trains ``DIR/trials/trial-<ray trial id>`` through
``search.run_trial`` (the same run folders and records as the local backend) and reports its
TPE loss and record; a driver-side callback appends the record to ``trials.jsonl``. Ray keeps
the experiment (the searcher's state included) in ``DIR/ray``: a search started again on the
same DIR restores it with Ray's experiment restore, finished trials are not run again and an
interrupted one is started again with the same values (its run folder resumes from its
checkpoint), and one Ray restarts although ``trials.jsonl`` already holds its record (an
interruption between the two) reports that record without training. The number of trials of a restored
experiment is the one it started with.

For a remote cluster DIR must be storage every node reaches at the same path.
"""

from __future__ import annotations

import json
from pathlib import Path

from neural_alignment.grids.ray_cluster import import_ray, ray_cluster
from neural_alignment.search.space import hyperopt_space, resolve
from neural_alignment.search.trials import TRIAL_FOLDERS, Objective, SearchPlan, TrialLog, run_trial

EXPERIMENT = "ray"
"""The Ray experiment's folder name inside DIR."""


def ray_trial(config: dict, plan: SearchPlan, objective: Objective, out: str) -> None:
    """One trial on a Ray worker: train it (``search.run_trial``), report {loss, record}."""
    from ray import tune

    trial_id = tune.get_context().get_trial_id()
    recorded = TrialLog(Path(out), objective, plan.max_evals, echo=lambda line: None)
    if trial_id in recorded:  # recorded before an interruption cut Ray's own bookkeeping: keep the record
        record = recorded.records[str(trial_id)]
    else:
        sample = resolve(objective.space, config)
        record = run_trial(plan, objective, sample, Path(out) / TRIAL_FOLDERS / f"trial-{trial_id}", trial_id)
    tune.report({"loss": objective.loss(record), "record": json.dumps(record)})


def record_callback(out: Path, objective: Objective, total: int):
    """A Tune callback (in the driver) that adds each reported record to ``trials.jsonl``."""
    from ray import tune

    class RecordTrials(tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            log, record = TrialLog(out, objective, total), json.loads(result["record"])
            if record["trial"] not in log:  # a trial restored after it was recorded reports the same record
                log.add(record)

    return RecordTrials()


def search_ray(plan: SearchPlan, objective: Objective, out: Path, log: TrialLog) -> None:
    """Run (or restore and continue) the Ray Tune experiment of ``plan`` in ``out / EXPERIMENT``."""
    import_ray()
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.hyperopt import HyperOptSearch

    out = out.resolve()
    experiment = out / EXPERIMENT
    trainable = tune.with_resources(
        tune.with_parameters(ray_trial, plan=plan, objective=objective, out=str(out)), {"cpu": 1}
    )
    with ray_cluster(num_cpus=plan.parallelism):
        if tune.Tuner.can_restore(str(experiment)):
            tuner = tune.Tuner.restore(str(experiment), trainable, resume_unfinished=True, resume_errored=True)
        else:
            searcher = HyperOptSearch(
                hyperopt_space(objective.space),
                metric="loss",
                mode="min",
                n_initial_points=objective.startup_trials,
                random_state_seed=plan.seed,
            )
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(
                    search_alg=ConcurrencyLimiter(searcher, max_concurrent=plan.parallelism), num_samples=plan.max_evals
                ),
                run_config=tune.RunConfig(
                    name=EXPERIMENT,
                    storage_path=str(out),
                    verbose=0,
                    callbacks=[record_callback(out, objective, plan.max_evals)],
                ),
            )
        tuner.fit()
    log.reload()  # what the callback wrote
