"""The ``nalign`` command.

Built here: ``list``, ``plugins`` and ``--version``. Every other subcommand (``run``, ``show``,
``compare``...) comes from a plugin's ``register_commands`` hook, built-ins included.
A user mistake (a ``UserError``: unknown kind, name, key, file) prints one line and exits 2; a run
that failed for a cause outside its recipe (a ``RunFailure``: a full disk, a lost process, a
plugin's error) one line and its exit code; a run stopped by SIGTERM or Ctrl-C (``Interrupted``,
after its checkpoint) one line and 128 + the signal.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Sequence

from neural_alignment import __version__
from neural_alignment.core.errors import RunFailure, UserError
from neural_alignment.registry import KINDS, PluginWarning, Registry, get_registry

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage mistake in one line (no usage dump), exit 2."""

    def error(self, message: str):
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _print_rows(rows: list[dict], columns: Sequence[str]) -> None:
    widths = [max([len(c)] + [len(str(r[c])) for r in rows]) for c in columns]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in rows:
        print("  ".join(str(row[c]).ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())


def cmd_list(args: argparse.Namespace, registry: Registry) -> int:
    """``nalign list KIND [PATTERN] [--json]``: the registered names of one kind."""
    if args.kind == "recipes":  # plugins register folders; a user looks for the recipes in them
        from neural_alignment.recipes.loader import recipe_entries

        entries = recipe_entries(args.pattern)
    else:
        entries = registry.catalog(args.kind).entries(args.pattern)
    rows = [{"name": e.name, "plugin": e.plugin, "description": e.description} for e in entries]
    if args.json:
        print(json.dumps(rows, indent=2))
    elif rows:
        _print_rows(rows, ("name", "plugin", "description"))
    else:
        print(f"no {args.kind} match {args.pattern!r}" if args.pattern else f"no {args.kind} registered")
    return 0


def cmd_plugins(args: argparse.Namespace, registry: Registry) -> int:
    """``nalign plugins [--json]``: each plugin, its distribution and version, what it registered, how it failed."""
    infos = registry.plugins()
    if args.json:
        print(json.dumps([info.__dict__ for info in infos], indent=2))
        return 0
    for info in infos:
        print(f"{info.name}  ({info.distribution} {info.version})")
        for kind, names in info.registered.items():
            print(f"    {kind}: {', '.join(names)}")
        if info.error:
            print(f"    failed: {info.error}")
    return 0


def build_parser(registry: Registry) -> argparse.ArgumentParser:
    parser = _Parser(prog="nalign", description="Deep learning without weight symmetry.")
    parser.add_argument("--version", action="version", version=f"nalign {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p_list = sub.add_parser("list", help="list registered ops, primitives, rules, ...")
    p_list.add_argument("kind", metavar="KIND", help=f"one of: {', '.join(KINDS)}")
    p_list.add_argument("pattern", metavar="PATTERN", nargs="?", help="glob, e.g. 'resnet*'")
    p_list.add_argument("--json", action="store_true", help="print JSON")
    p_list.set_defaults(func=lambda a: cmd_list(a, registry))

    p_plugins = sub.add_parser("plugins", help="list loaded plugins and what each registered")
    p_plugins.add_argument("--json", action="store_true", help="print JSON")
    p_plugins.set_defaults(func=lambda a: cmd_plugins(a, registry))

    registry.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        with warnings.catch_warnings():  # printed below as one line each
            warnings.simplefilter("ignore", PluginWarning)
            registry = get_registry()
        for failure in registry.failures:
            print(f"nalign: warning: {failure}", file=sys.stderr)
        parser = build_parser(registry)
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return EXIT_USER_ERROR
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"nalign: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except RunFailure as exc:
        if str(exc):  # "" where another process of the run reports it
            print(f"nalign: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:  # Ctrl-C, or a run that stopped on a signal with its checkpoint
        report = getattr(exc, "report", "interrupted")  # "" in the other processes of a data-parallel run
        if report:
            print(f"nalign: {report}", file=sys.stderr)
        return getattr(exc, "exit_code", EXIT_INTERRUPTED)
    except BrokenPipeError:  # e.g. `nalign list rules | head`: the reader left, nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
