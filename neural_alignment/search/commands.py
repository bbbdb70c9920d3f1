"""The ``nalign search`` and ``search-report`` subcommands (added by ``plugins.search``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from neural_alignment.core.errors import EXIT_FAILED, UserError
from neural_alignment.recipes.commands import add_recipe_arguments


def cmd_search(args: argparse.Namespace) -> int:
    """``nalign search NAME [KEY=VALUE ...] --out DIR [--max-evals N] [--backend local|ray] [--parallelism K]``,
    or ``nalign search --resume DIR [--max-evals N]``: TPE over the recipe's ``search.space``."""
    from neural_alignment.search.run import plan_for, run_search
    from neural_alignment.search.trials import SearchPlan
    from neural_alignment.training.rundir import default_run_dir

    if args.resume:
        if args.recipe or args.overrides:
            raise UserError("give NAME [KEY=VALUE ...] for a new search or --resume DIR, not both")
        out = Path(args.resume)
        plan = SearchPlan.read(out)
        if args.max_evals is not None:
            plan.max_evals = args.max_evals
    else:
        if not args.recipe:
            raise UserError("nalign search needs a recipe NAME (e.g. search-fmnist-wm) or --resume DIR")
        plan = plan_for(args.recipe, args.overrides, args.max_evals, args.backend, args.parallelism, args.seed)
        out = Path(args.out) if args.out else default_run_dir(f"search-{plan.load().name}")
    best = run_search(plan, out, new=not args.resume)
    print(f"search folder: {out}")
    return 0 if best is not None else EXIT_FAILED


def cmd_search_report(args: argparse.Namespace) -> int:
    """``nalign search-report DIR``: scores.png; the importance table and importance.png (categorical
    choices); values.png (score and weight angle against each continuous value). No empty figure."""
    from neural_alignment.analysis.importance import (
        importance,
        importance_figure,
        importance_table,
        save,
        scores_figure,
        values_figure,
    )
    from neural_alignment.runtime.atomic import write_text_atomically
    from neural_alignment.search.space import categorical_keys, continuous_keys
    from neural_alignment.search.trials import TRIALS, Objective, SearchPlan, read_records

    out = Path(args.dir)
    objective = Objective.of(SearchPlan.read(out).load())
    path = out / TRIALS
    if path.exists() and not path.is_file():
        raise UserError(f"{path} is not a file; a search writes its records there (move it aside)")
    records = read_records(path)
    if not records:
        raise UserError(f"{path} holds no trial record: no trial of this search has finished yet")
    ranked = importance(records, categorical_keys(objective.space))
    finished = sum(r.get("score") is not None for r in records)
    print(f"{len(records)} trials, {finished} with a score ({objective.metric}, goal {objective.goal})")
    written = [save(scores_figure(records, objective.metric, objective.goal), out / "scores.png")]
    if ranked:
        table = importance_table(ranked, objective.metric)
        print(table)
        write_text_atomically(out / "importance.md", table + "\n")
        figure = importance_figure(ranked, objective.metric)
        assert figure is not None  # None only without ranked keys
        written.append(save(figure, out / "importance.png"))
    else:
        print("no categorical choice in the space has a scored trial: no importance table (importance.md, .png)")
    values = values_figure(records, continuous_keys(objective.space), objective.metric)
    if values is not None:
        written.append(save(values, out / "values.png"))
    print(f"figures: {', '.join(map(str, written))}")
    return 0


def register(subparsers) -> None:
    """Add ``search`` and ``search-report`` to the ``nalign`` subparsers."""
    search = subparsers.add_parser("search", help="TPE search over a recipe's search.space (hyperopt, local or Ray)")
    add_recipe_arguments(search, optional=True)
    folder = search.add_mutually_exclusive_group()
    folder.add_argument("--out", metavar="DIR", help="search folder (default runs/search-<recipe>-<timestamp>)")
    folder.add_argument("--resume", metavar="DIR", help="continue the search in DIR without repeating a finished trial")
    search.add_argument(
        "--max-evals", type=int, metavar="N", help="number of trials (default: the recipe's search.max_evals)"
    )
    search.add_argument(
        "--backend",
        choices=("local", "ray"),
        default="local",
        help="local: hyperopt.fmin here; ray: Ray Tune on RAY_ADDRESS's cluster or a local one",
    )
    search.add_argument("--parallelism", type=int, default=1, metavar="K", help="trials at once (ray)")
    search.add_argument("--seed", type=int, default=0, help="seed of TPE's draws")
    search.set_defaults(func=cmd_search)

    report = subparsers.add_parser(
        "search-report",
        help="a search's scores, its categorical choices ranked by effect, the score against continuous values",
    )
    report.add_argument("dir", metavar="DIR", help="a search folder")
    report.set_defaults(func=cmd_search_report)
