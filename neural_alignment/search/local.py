"""``nalign search`` on this machine: ``hyperopt.fmin`` one trial at a time.

The hyperopt ``Trials`` are pickled in DIR (``trials.pkl``) after each trial; TPE's suggestion for
trial t is seeded by (seed, t), so a resumed search re-suggests an interrupted trial identically and
resumes its run folder. ``trials.pkl`` is only a cache of what ``trials.jsonl`` records: a trial
that is recorded is never trained again, its recorded loss is handed to TPE, so a missing or
damaged ``trials.pkl`` (moved aside to ``trials.pkl.damaged``, with a notice) is rebuilt by
replaying the records, suggestion by suggestion, to the same history.
"""

from __future__ import annotations

import os
import pickle
from functools import partial
from pathlib import Path

from neural_alignment.core.errors import UserError
from neural_alignment.runtime.atomic import replaced_atomically
from neural_alignment.search.space import hyperopt_space, resolve
from neural_alignment.search.trials import (
    HYPEROPT_TRIALS,
    TRIAL_FOLDERS,
    Objective,
    SearchPlan,
    TrialLog,
    notice,
    run_trial,
)


def seeded_tpe(seed: int, startup_trials: int, new_ids, domain, trials, _seed):
    """hyperopt's TPE, its draw for trial ``t`` seeded by (``seed``, t) rather than by fmin's running RNG."""
    from hyperopt import tpe

    return tpe.suggest(new_ids, domain, trials, seed=seed * 1_000_003 + int(new_ids[0]), n_startup_jobs=startup_trials)


def load_trials(path: Path, recorded: int):
    """The pickled hyperopt ``Trials`` at ``path``; new ones when it is missing, and when it is damaged
    (moved aside to ``trials.pkl.damaged``, with a notice: the ``recorded`` records are replayed)."""
    from hyperopt import Trials

    if not path.exists():
        return Trials()
    try:
        trials = pickle.loads(path.read_bytes())
        if not isinstance(trials, Trials):
            raise TypeError(f"it holds a {type(trials).__name__}")
        return trials
    except Exception as exc:  # a torn or foreign pickle raises any of several errors
        damaged = path.with_name(f"{path.name}.damaged")
        os.replace(path, damaged)
        notice(
            f"{path} is unreadable ({type(exc).__name__}); moved to {damaged}, and TPE's history rebuilt "
            f"from the {recorded} record(s) of trials.jsonl (no recorded trial is trained again)"
        )
        return Trials()


def search_local(plan: SearchPlan, objective: Objective, out: Path, log: TrialLog) -> None:
    """``hyperopt.fmin`` one trial at a time, ``trials.pkl`` written atomically after each."""
    import numpy as np
    from hyperopt import STATUS_OK, fmin
    from hyperopt.fmin import fmin_pass_expr_memo_ctrl
    from hyperopt.pyll import rec_eval

    pickled = out / HYPEROPT_TRIALS
    trials = load_trials(pickled, len(log.records))
    space = hyperopt_space(objective.space)

    @fmin_pass_expr_memo_ctrl
    def evaluate(expr, memo, ctrl):
        tid = int(ctrl.current_trial["tid"])
        sample = resolve(objective.space, rec_eval(expr, memo=memo))
        if tid in log:  # recorded, but not in trials.pkl (killed before it was saved, or it was rebuilt)
            record = log.records[str(tid)]
            if record["values"] != sample.values:
                raise UserError(
                    f"{log.path}: trial {tid} was recorded with {record['values']}, but this search suggests "
                    f"{sample.values} for it: the records are not this search's; move {log.path.name} aside"
                )
            return {"loss": objective.loss(record), "status": STATUS_OK}
        record = run_trial(plan, objective, sample, out / TRIAL_FOLDERS / f"trial-{tid:04d}", tid)
        log.add(record)
        return {"loss": objective.loss(record), "status": STATUS_OK}

    algo = partial(seeded_tpe, plan.seed, objective.startup_trials)
    while len(trials.trials) < plan.max_evals:
        fmin(
            evaluate,
            space,
            algo=algo,
            max_evals=len(trials.trials) + 1,
            trials=trials,
            rstate=np.random.default_rng(plan.seed),
            show_progressbar=False,
        )
        with replaced_atomically(pickled) as tmp:
            tmp.write_bytes(pickle.dumps(trials))
