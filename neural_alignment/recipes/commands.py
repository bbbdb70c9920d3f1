"""The ``nalign run``, ``show`` and ``compare`` subcommands (added by ``plugins.commands``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from neural_alignment.core.errors import UserError
from neural_alignment.recipes.loader import SUFFIXES, load_recipe, load_resolved_recipe, recipe_files, to_yaml


def allow_intermixed(parser: argparse.ArgumentParser) -> None:
    """Let ``KEY=VALUE`` overrides come after options (``compare NAME --rules a,b k=v``).

    argparse stops a ``nargs='*'`` positional at the first option; its intermixed parser
    does not. The subparsers action calls ``parse_known_args``, so this parser's instance
    routes that call to ``parse_known_intermixed_args`` (which itself calls the plain method).
    """
    plain = parser.parse_known_args

    def parse_known_args(args=None, namespace=None):
        parser.parse_known_args = plain
        try:
            return parser.parse_known_intermixed_args(args, namespace)
        finally:
            parser.parse_known_args = parse_known_args

    parser.parse_known_args = parse_known_args


def add_recipe_arguments(parser: argparse.ArgumentParser, optional: bool = False) -> None:
    allow_intermixed(parser)
    parser.add_argument("recipe", metavar="NAME", nargs="?" if optional else None,
                        help="a recipe name (see 'nalign show') or a YAML file")
    parser.add_argument("overrides", metavar="KEY=VALUE", nargs="*", help="recipe overrides, e.g. rule.name=kp")


def cmd_show(args: argparse.Namespace) -> int:
    """``nalign show NAME [KEY=VALUE ...]``: print the resolved recipe as YAML; without NAME, list the recipes."""
    if args.recipe is None:
        for name, path in recipe_files().items():
            print(f"{name}  {path}")
        return 0
    print(to_yaml(load_recipe(args.recipe, args.overrides)), end="")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """``nalign run NAME [KEY=VALUE ...] [--out DIR] [--overwrite]`` or ``nalign run --resume DIR [KEY=VALUE ...]``."""
    from neural_alignment.recipes.build import launch_processes
    from neural_alignment.recipes.rundir import default_run_dir
    from neural_alignment.recipes.trainer import train

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
    from neural_alignment.recipes.rundir import RECIPE

    if name is not None and "=" in name and Path(name).suffix not in SUFFIXES:
        name, overrides = None, [name, *overrides]
    recipe_file = Path(run_dir) / RECIPE
    if not recipe_file.is_file():
        raise UserError(f"cannot resume: {recipe_file} does not exist (was the run folder given?)")
    recipe = load_resolved_recipe(recipe_file, overrides)
    if name is not None and name != recipe.name and Path(name).stem != recipe.name:
        raise UserError(f"{run_dir} holds a run of recipe {recipe.name!r}, not {name!r}; "
                        f"resume it with 'nalign run --resume {run_dir}' (no NAME needed)")
    return recipe


def cmd_compare(args: argparse.Namespace) -> int:
    """``nalign compare NAME --rules bp,fa,... [--seeds K] [--vary KEY=V1,V2,...] [--backend local|ray]
    [KEY=VALUE ...] [--out DIR]``: one run per rule x value x seed, a table (mean ± s.e.m.) and a figure."""
    from neural_alignment.recipes.compare import compare

    rules = [r.strip() for r in args.rules.split(",") if r.strip()]
    compare(args.recipe, rules, args.overrides, args.out, seeds=args.seeds, vary=args.vary, backend=args.backend)
    return 0


def register(subparsers) -> None:
    """Add ``run``, ``show`` and ``compare`` to the ``nalign`` subparsers."""
    show = subparsers.add_parser("show", help="print a resolved recipe (without NAME: list the recipes)")
    add_recipe_arguments(show, optional=True)
    show.set_defaults(func=cmd_show)

    run = subparsers.add_parser("run", help="train a recipe (or continue one with --resume DIR)")
    add_recipe_arguments(run, optional=True)  # --resume DIR takes the folder's recipe
    folder = run.add_mutually_exclusive_group()  # a resumed run stays in its folder
    folder.add_argument("--out", metavar="DIR", help="a new or empty run folder (default runs/<recipe>-<timestamp>)")
    folder.add_argument("--resume", metavar="DIR", help="continue the run in DIR with its recipe; only the length, "
                        "logging/checkpoint intervals and loggers may be changed with KEY=VALUE")
    run.add_argument("--overwrite", action="store_true", help="replace what the --out folder holds")
    run.set_defaults(func=cmd_run)

    comp = subparsers.add_parser("compare", help="train a recipe once per rule (x seed x varied value) and compare")
    add_recipe_arguments(comp)
    comp.add_argument("--rules", default="bp,fa,wm,ia,sa,aa,kp", help="comma-separated rule names")
    comp.add_argument("--seeds", type=int, default=1, metavar="K",
                      help="train every cell with K seeds (train.seed, +1, ...); the table gives mean ± s.e.m.")
    comp.add_argument("--vary", metavar="KEY=V1,V2,...",
                      help="train every rule at each value of a recipe key (lists in brackets: model.options.channels=[8],[8,8])")
    comp.add_argument("--backend", choices=("local", "ray"), default="local",
                      help="run the grid one run after another (local) or as parallel tasks on Ray (RAY_ADDRESS, else a local cluster)")
    comp.add_argument("--out", metavar="DIR",
                      help="output folder (default runs/compare-<recipe>-<timestamp>); finished runs in it are reused")
    comp.set_defaults(func=cmd_compare)
