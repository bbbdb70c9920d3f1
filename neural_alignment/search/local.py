"""``nalign search`` on this machine: ``hyperopt.fmin`` one trial at a time.

The hyperopt ``Trials`` are pickled in DIR (``trials.pkl``) after each trial; TPE's suggestion for
trial t is seeded by (seed, t), so a resumed search re-suggests an interrupted trial identically and
resumes its run folder.
"""

from __future__ import annotations

import pickle
from functools import partial
from pathlib import Path

from neural_alignment.runtime.atomic import replaced_atomically
from neural_alignment.search.space import hyperopt_space, resolve
from neural_alignment.search.trials import HYPEROPT_TRIALS, TRIAL_FOLDERS, Objective, SearchPlan, TrialLog, run_trial


def seeded_tpe(seed: int, startup_trials: int, new_ids, domain, trials, _seed):
    """hyperopt's TPE, its draw for trial ``t`` seeded by (``seed``, t) rather than by fmin's running RNG."""
    from hyperopt import tpe

    return tpe.suggest(new_ids, domain, trials, seed=seed * 1_000_003 + int(new_ids[0]), n_startup_jobs=startup_trials)


def search_local(plan: SearchPlan, objective: Objective, out: Path, log: TrialLog) -> None:
    """``hyperopt.fmin`` one trial at a time, ``trials.pkl`` written atomically after each."""
    import numpy as np
    from hyperopt import STATUS_OK, Trials, fmin
    from hyperopt.fmin import fmin_pass_expr_memo_ctrl
    from hyperopt.pyll import rec_eval

    pickled = out / HYPEROPT_TRIALS
    trials = pickle.loads(pickled.read_bytes()) if pickled.is_file() else Trials()
    space = hyperopt_space(objective.space)

    @fmin_pass_expr_memo_ctrl
    def evaluate(expr, memo, ctrl):
        tid = int(ctrl.current_trial["tid"])
        if tid in log:  # finished and recorded, but killed before trials.pkl was saved: keep the record
            return {"loss": objective.loss(log.records[str(tid)]), "status": STATUS_OK}
        sample = resolve(objective.space, rec_eval(expr, memo=memo))
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
