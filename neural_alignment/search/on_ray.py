"""``nalign search --backend ray``: Ray Tune with hyperopt's TPE (``HyperOptSearch``) as the searcher.

At most ``--parallelism`` trials run at once (a ``ConcurrencyLimiter``), each holding the Ray
resources ``search.trial_resources`` names (default one CPU; a GPU or TPU one trains on ``cuda`` or
``xla``: ``grids.placement``), so a cluster runs no more at once than it has of them; the cluster
is ``RAY_ADDRESS``'s or a local one sized for ``parallelism`` trials (``grids.ray_cluster``).
Each trial trains ``DIR/trials/trial-<ray trial id>`` through
``search.run_trial`` (the same run folders and records as the local backend) and reports its
TPE loss and record; a driver-side callback appends the record to ``trials.jsonl``. Ray keeps
the experiment (the searcher's state included) in ``DIR/ray``: a search started again on the
same DIR restores it with Ray's experiment restore, finished trials are not run again and an
interrupted one is started again with the same values (its run folder resumes from its
checkpoint), and one Ray restarts although ``trials.jsonl`` already holds its record (an
interruption between the two) reports that record without training. The number of trials of a restored
experiment is the one it started with. The driver saves the
experiment's state at most ``EXPERIMENT_SAVE_SECONDS`` apart (``TUNE_GLOBAL_CHECKPOINT_S`` when set),
so a driver killed outright (SIGKILL, its machine lost) loses at most the trials suggested in that
last second, and those have not finished: none that finished is run again.

DIR must be storage every node reaches at the same path: each trial first checks that it sees the
driver's DIR (``grids.placement.unseen_folder``) and is recorded as failed, with the reason, when
it does not. A trial whose worker dies (its node lost, the process killed) is started again, up to
``placement.RETRIES`` times on any node with the resources, resuming its run folder from its last
checkpoint; after that it is recorded as failed (``RecordTrials.on_trial_error``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from neural_alignment.grids import placement
from neural_alignment.grids.executor import run_placed
from neural_alignment.grids.ray_cluster import import_ray, ray_cluster
from neural_alignment.search.space import hyperopt_space, resolve
from neural_alignment.search.trials import TRIAL_FOLDERS, Objective, SearchPlan, TrialLog, run_trial, trial_record

EXPERIMENT = "ray"
"""The Ray experiment's folder name inside DIR."""
EXPERIMENT_SAVE_SECONDS = "1"
"""The driver saves the experiment's state at most this far apart (Tune's ``TUNE_GLOBAL_CHECKPOINT_S``)."""


def ray_trial(config: dict, plan: SearchPlan, objective: Objective, out: str, token: str) -> None:
    """One trial on a Ray worker: train it (``search.run_trial``), report {loss, record}."""
    from ray import tune

    trial_id = tune.get_context().get_trial_id()
    sample = resolve(objective.space, config)
    unseen = placement.unseen_folder(Path(out), token)
    if unseen:  # trained here, the trial's folder would be one the driver never reads
        record = trial_record(objective, trial_id, sample, {"status": "failed", "error": unseen}, f"trial-{trial_id}")
    else:
        recorded = TrialLog(Path(out), objective, plan.max_evals, echo=lambda line: None)
        if trial_id in recorded:  # recorded before an interruption cut Ray's own bookkeeping: keep the record
            record = recorded.records[str(trial_id)]
        else:
            run_dir = Path(out) / TRIAL_FOLDERS / f"trial-{trial_id}"
            record = run_trial(plan, objective, sample, run_dir, trial_id, run=run_placed)
    tune.report({"loss": objective.loss(record), "record": json.dumps(record)})


def record_callback(out: Path, objective: Objective, total: int):
    """A Tune callback (in the driver) that adds each reported record to ``trials.jsonl``, and a
    failed record for a trial Tune gave up on (its worker died more than ``placement.RETRIES`` times)."""
    from ray import tune

    class RecordTrials(tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            self.add(json.loads(result["record"]))

        def on_trial_error(self, iteration, trials, trial, **info):
            error = f"its Ray worker died {placement.RETRIES + 1} times (node lost or process killed)"
            sample = resolve(objective.space, trial.config)
            summary = {"status": "failed", "error": error}
            self.add(trial_record(objective, trial.trial_id, sample, summary, f"trial-{trial.trial_id}"))

        def add(self, record: dict) -> None:
            log = TrialLog(out, objective, total)
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
    resources = placement.trial_resources(plan.load().search.trial_resources)
    token = placement.mark_shared(out)
    trainable = tune.with_resources(
        tune.with_parameters(ray_trial, plan=plan, objective=objective, out=str(out), token=token), resources
    )
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", EXPERIMENT_SAVE_SECONDS)
    with ray_cluster(num_cpus=placement.local_cpus(plan.parallelism, resources)):
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
                    failure_config=tune.FailureConfig(max_failures=placement.RETRIES),
                ),
            )
        tuner.fit()
    log.reload()  # what the callback wrote
