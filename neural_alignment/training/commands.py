"""The ``nalign run`` subcommand: train a recipe, or continue a run with ``--resume DIR``."""

from __future__ import annotations

import argparse
from pathlib import Path

from neural_alignment.core.errors import UserError
from neural_alignment.recipes.commands import add_recipe_arguments
from neural_alignment.recipes.loader import SUFFIXES, load_recipe, load_resolved_recipe


def cmd_run(args: argparse.Namespace) -> int:
    """``nalign run NAME [KEY=VALUE ...] [--out DIR] [--overwrite]`` or ``nalign run --resume DIR [KEY=VALUE ...]``."""
    from neural_alignment.training.build import launch_processes
    from neural_alignment.training.rundir import default_run_dir
    from neural_alignment.training.trainer import train

    if args.resume:
        if args.overwrite:
            raise UserError("--overwrite replaces a run folder and --resume continues one: give one of them")
        recipe, run_dir = resume_recipe(args.resume, args.recipe, args.overrides), args.resume
    elif args.recipe is None:
        raise UserError("nalign run needs a recipe NAME (see 'nalign show'), or --resume DIR to continue a run")
    else:
        recipe = load_recipe(args.recipe, args.overrides)
        run_dir = args.out or str(default_run_dir(recipe.name))
    # a backend that starts its own processes runs this command in each, with the run folder fixed here
    folder = ["--resume", run_dir] if args.resume else ["--out", run_dir, *(["--overwrite"] if args.overwrite else [])]
    code = launch_processes(recipe, ["run", *([args.recipe] if args.recipe else []), *args.overrides, *folder])
    if code is not None:  # rank 0 printed the run folder
        return code
    result = train(recipe, run_dir, resume=bool(args.resume), overwrite=args.overwrite)
    if result.is_main:
        print(f"run folder: {result.run_dir}")
    return 0


def resume_recipe(run_dir: str, name: str | None, overrides: list[str]):
    """The recipe of the run in ``run_dir`` with ``overrides``; a NAME, when given, must be that run's recipe.

    ``nalign run --resume DIR k=v`` parses ``k=v`` as NAME: it is taken as an override.
    """
    from neural_alignment.training.rundir import RECIPE, missing_file

    if name is not None and "=" in name and Path(name).suffix not in SUFFIXES:
        overrides = [name, *overrides]
        name = None
    recipe_file = Path(run_dir) / RECIPE
    if not recipe_file.is_file():
        raise UserError(f"cannot resume: {missing_file(recipe_file)}")
    recipe = load_resolved_recipe(recipe_file, overrides)
    if name is not None and name != recipe.name and Path(name).stem != recipe.name:
        raise UserError(
            f"{run_dir} holds a run of recipe {recipe.name!r}, not {name!r}; "
            f"resume it with 'nalign run --resume {run_dir}' (no NAME needed)"
        )
    return recipe


def register(subparsers) -> None:
    """Add ``run`` to the ``nalign`` subparsers."""
    run = subparsers.add_parser("run", help="train a recipe (or continue one with --resume DIR)")
    add_recipe_arguments(run, optional=True)  # --resume DIR takes the folder's recipe
    folder = run.add_mutually_exclusive_group()  # a resumed run stays in its folder
    folder.add_argument("--out", metavar="DIR", help="a new or empty run folder (default runs/<recipe>-<timestamp>)")
    folder.add_argument(
        "--resume",
        metavar="DIR",
        help="continue the run in DIR with its recipe; only the length, "
        "logging/checkpoint intervals and loggers may be changed with KEY=VALUE",
    )
    run.add_argument("--overwrite", action="store_true", help="replace what the --out folder holds")
    run.set_defaults(func=cmd_run)
