"""The ``nalign compare`` subcommand: one run per rule x value x seed, a table and a figure."""

from __future__ import annotations

import argparse

from neural_alignment.recipes.commands import add_recipe_arguments


def cmd_compare(args: argparse.Namespace) -> int:
    """``nalign compare NAME --rules bp,fa,... [--seeds K] [--vary KEY=V1,V2,...] [--backend local|ray]
    [KEY=VALUE ...] [--out DIR] [--no-train]``: one run per rule x value x seed, a table (mean ± s.e.m.)
    and a figure."""
    from neural_alignment.grids.compare import compare

    rules = [r.strip() for r in args.rules.split(",") if r.strip()]
    compare(
        args.recipe,
        rules,
        args.overrides,
        args.out,
        seeds=args.seeds,
        vary=args.vary,
        backend=args.backend,
        train=not args.no_train,
    )
    return 0


def register(subparsers) -> None:
    """Add ``compare`` to the ``nalign`` subparsers."""
    comp = subparsers.add_parser("compare", help="train a recipe once per rule (x seed x varied value) and compare")
    add_recipe_arguments(comp)
    comp.add_argument("--rules", default="bp,fa,wm,ia,sa,aa,kp", help="comma-separated rule names")
    comp.add_argument(
        "--seeds",
        type=int,
        default=1,
        metavar="K",
        help="train every cell with K seeds (train.seed, +1, ...); the table gives mean ± s.e.m.",
    )
    comp.add_argument(
        "--vary",
        metavar="KEY=V1,V2,...",
        help="train every rule at each value of a recipe key (lists in brackets: model.options.channels=[8],[8,8])",
    )
    comp.add_argument(
        "--backend",
        choices=("local", "ray"),
        default="local",
        help="run the grid one run after another (local) or as parallel tasks on Ray (RAY_ADDRESS, else a local cluster)",
    )
    comp.add_argument(
        "--out",
        metavar="DIR",
        help="output folder (default runs/compare-<recipe>-<timestamp>); finished runs in it are reused",
    )
    comp.add_argument(
        "--no-train",
        action="store_true",
        help="train nothing: the table and figure of the runs already finished in --out (the others: not run)",
    )
    comp.set_defaults(func=cmd_compare)
