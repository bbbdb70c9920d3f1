"""The ``nalign show`` subcommand and the recipe arguments every recipe-taking subcommand shares."""

from __future__ import annotations

import argparse

from neural_alignment.recipes.loader import load_recipe, recipe_files, to_yaml


def allow_intermixed(parser: argparse.ArgumentParser) -> None:
    """Let ``KEY=VALUE`` overrides come after options (``compare NAME --rules a,b k=v``).

    argparse stops a ``nargs='*'`` positional at the first option; its intermixed parser
    does not. The subparsers action calls ``parse_known_args``, so this parser's instance
    routes that call to ``parse_known_intermixed_args`` (which itself calls the plain method).
    """
    plain = parser.parse_known_args

    def parse_known_args(args=None, namespace=None):
        parser.parse_known_args = plain  # type: ignore[method-assign]  # this instance only, on purpose
        try:
            return parser.parse_known_intermixed_args(args, namespace)
        finally:
            parser.parse_known_args = parse_known_args  # type: ignore[method-assign]  # as above

    parser.parse_known_args = parse_known_args  # type: ignore[method-assign]  # as above


def add_recipe_arguments(parser: argparse.ArgumentParser, optional: bool = False) -> None:
    allow_intermixed(parser)
    parser.add_argument(
        "recipe",
        metavar="NAME",
        nargs="?" if optional else None,
        help="a recipe name (see 'nalign show') or a YAML file",
    )
    parser.add_argument("overrides", metavar="KEY=VALUE", nargs="*", help="recipe overrides, e.g. rule.name=kp")


def cmd_show(args: argparse.Namespace) -> int:
    """``nalign show NAME [KEY=VALUE ...]``: print the resolved recipe as YAML; without NAME, list the recipes."""
    if args.recipe is None:
        for name, path in recipe_files().items():
            print(f"{name}  {path}")
        return 0
    print(to_yaml(load_recipe(args.recipe, args.overrides)), end="")
    return 0


def register(subparsers) -> None:
    """Add ``show`` to the ``nalign`` subparsers."""
    show = subparsers.add_parser("show", help="print a resolved recipe (without NAME: list the recipes)")
    add_recipe_arguments(show, optional=True)
    show.set_defaults(func=cmd_show)
