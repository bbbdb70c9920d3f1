"""The ``nalign compare`` subcommand: one run per rule x value x seed, a table and a figure."""

from __future__ import annotations

import argparse

from neural_alignment.core.errors import EXIT_FAILED, UserError
from neural_alignment.recipes.commands import add_recipe_arguments


def cmd_compare(args: argparse.Namespace) -> int:
    """``nalign compare NAME --rules bp,fa,... [--seeds K] [--vary KEY=V1,V2,...] [--backend local|ray]
    [--trial-resources MAPPING] [KEY=VALUE ...] [--out DIR] [--no-train]``: one run per rule x value x
    seed, a table (mean ± s.e.m.) and a figure."""
    from neural_alignment.grids.compare import compare
    from neural_alignment.grids.placement import trial_resources

    rules = [r.strip() for r in args.rules.split(",") if r.strip()]
    resources = trial_resources(parse_mapping(args.trial_resources, "--trial-resources"), "--trial-resources")
    report = compare(
        args.recipe,
        rules,
        args.overrides,
        args.out,
        seeds=args.seeds,
        vary=args.vary,
        backend=args.backend,
        trial_resources=resources,
        train=not args.no_train,
    )
    return EXIT_FAILED if report["failed"] else 0


def parse_mapping(text: str | None, flag: str) -> dict:
    """``text`` (YAML flow syntax: ``{gpu: 1}``) as a mapping (``{}`` for ``None``); a ``UserError`` naming
    ``flag`` when it is not one."""
    import yaml

    try:
        value = yaml.safe_load(text) if text else {}
    except yaml.YAMLError:
        value = None
    if not isinstance(value, dict):
        raise UserError(f"{flag} must be a mapping of Ray resources, e.g. '{{gpu: 1}}' or '{{TPU: 4}}'; got {text!r}")
    return value


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
        help="run the grid one run after another (local) or as parallel tasks on Ray "
        "(RAY_ADDRESS, else a local cluster)",
    )
    comp.add_argument(
        "--trial-resources",
        metavar="MAPPING",
        help="Ray resources each run holds on --backend ray, merged onto {cpu: 1}: e.g. '{gpu: 1}' (a GPU "
        "run trains on cuda), '{TPU: 4}' (xla); see docs/scaling.md",
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
