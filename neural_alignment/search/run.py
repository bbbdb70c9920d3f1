"""Run a search to its end: check the plan, train its trials on the chosen backend
(``search.local`` or ``search.on_ray``), then write ``summary.md`` and ``best.yaml``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from neural_alignment.core.errors import UserError
from neural_alignment.recipes.loader import find_recipe, load_recipe, to_yaml
from neural_alignment.runtime.atomic import write_text_atomically
from neural_alignment.runtime.folder_lock import FolderLock, create_folder
from neural_alignment.search.local import search_local
from neural_alignment.search.trials import (
    BEST,
    PLAN,
    TABLE,
    Objective,
    SearchPlan,
    TrialLog,
    check_space_fits,
    format_value,
    override,
)


def run_search(plan: SearchPlan, out: Path, echo: Callable[[str], None] = print, new: bool = False) -> dict | None:
    """Run (or continue) the search ``plan`` in ``out``; write best.yaml and summary.md; return the best record.

    The plan and its space are checked against the recipe before anything is written; then the
    search holds the lock of ``out`` (``runtime.folder_lock``) for its whole life, so a second
    search on the same folder is refused before it writes or removes anything. ``new``: a new
    search, which refuses a folder that holds a search (continue that with ``--resume``) or
    anything else.
    """
    if plan.max_evals < 1:
        raise UserError(f"the number of trials must be >= 1, got {plan.max_evals} (--max-evals or search.max_evals)")
    if plan.backend not in ("local", "ray"):
        raise UserError(f"--backend must be local or ray, got {plan.backend!r}")
    if plan.parallelism < 1:
        raise UserError(f"--parallelism must be >= 1, got {plan.parallelism}")
    objective = Objective.of(plan.load())
    check_space_fits(plan, objective.space)
    create_folder(out, "search folder", "a new or empty folder")
    in_use = (
        f"search folder {out} is in use by another search (it holds the folder's lock); "
        "wait for it to end or give another --out"
    )
    with FolderLock(out, in_use):
        if new and (out / PLAN).is_file():
            raise UserError(f"{out} already holds a search; continue it with: nalign search --resume {out}")
        held = sorted(p.name for p in out.iterdir())
        if new and held:
            shown = ", ".join(held[:4]) + (", ..." if len(held) > 4 else "")
            raise UserError(
                f"search folder {out} is not empty ({shown}) and holds no search; give a new or empty folder"
            )
        plan.save(out)
        log = TrialLog(out, objective, plan.max_evals, echo)
        if plan.backend == "local":
            search_local(plan, objective, out, log)
        else:
            from neural_alignment.search.on_ray import search_ray  # imports Ray: only when asked for

            search_ray(plan, objective, out, log)
        return finish(plan, objective, out, log, echo)


def finish(
    plan: SearchPlan, objective: Objective, out: Path, log: TrialLog, echo: Callable[[str], None]
) -> dict | None:
    """Write ``summary.md`` (the trials table) and ``best.yaml``; echo both's whereabouts."""
    table = trials_table(list(log.records.values()), objective)
    write_text_atomically(out / TABLE, table + "\n")
    echo(table)
    best = log.best()
    if best is None:
        echo(f"[search] no trial finished with a score; nothing written to {out / BEST}")
        return None
    write_text_atomically(out / BEST, best_recipe_yaml(plan, objective, best))
    echo(f"[search] best: trial {best['trial']}, {objective.metric} {best['score']:.4f}; recipe {out / BEST}")
    return best


def best_recipe_yaml(plan: SearchPlan, objective: Objective, best: dict) -> str:
    """The base recipe with the best trial's values, resolved and standing alone (no base, no by_rule)."""
    recipe = load_recipe(plan.recipe, [*plan.overrides, *(override(k, v) for k, v in best["overrides"].items())])
    recipe.name = f"{objective.name}-best"
    recipe.base = None
    recipe.by_rule = {}
    recipe.description = f"The best trial ({best['trial']}) of a TPE search of {objective.name}"
    header = f"# {objective.metric} {best['score']:.4f} (trial {best['trial']}); values: {json.dumps(best['values'])}\n"
    return header + to_yaml(recipe)


def trials_table(records: list[dict], objective: Objective) -> str:
    """A Markdown table of ``records``, best first (failed last): trial, status, score, seconds, values."""
    keys = list(dict.fromkeys(k for r in records for k in r["values"]))
    ordered = sorted(records, key=objective.loss)
    head = ["trial", "status", objective.metric, "mean angle", "s", *keys]
    rows = [
        [
            str(r["trial"]),
            r["status"],
            "" if r["score"] is None else f"{r['score']:.4f}",
            format_value(r["mean_weight_angle"]) if "mean_weight_angle" in r else "",
            f"{r.get('seconds') or 0:.0f}",
            *(format_value(r["values"].get(k, "")) for k in keys),
        ]
        for r in ordered
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def plan_for(
    name: str, overrides: list[str], max_evals: int | None, backend: str, parallelism: int, seed: int = 0
) -> SearchPlan:
    """A new search's plan: the recipe made an absolute path if it is a file; ``max_evals``
    defaults to the recipe's ``search.max_evals``."""
    path = Path(name)
    recipe = str(find_recipe(name).resolve()) if path.suffix in (".yaml", ".yml") else name
    plan = SearchPlan(recipe, list(overrides), 0, backend, parallelism, seed)
    plan.max_evals = max_evals if max_evals is not None else plan.load().search.max_evals
    return plan
