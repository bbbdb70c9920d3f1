"""The ``nalign report``, ``analyze d1``, ``analyze d2`` and ``neural-fit`` subcommands
(added through ``register_commands`` by ``plugins/analysis_commands.py``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import overload

from neural_alignment.core.errors import UserError
from neural_alignment.runtime.atomic import write_text_atomically


@overload
def comma_list(text: str, kind=..., what: str = ...) -> list: ...
@overload
def comma_list(text: None, kind=..., what: str = ...) -> None: ...
def comma_list(text: str | None, kind=str, what: str = "value") -> list | None:
    """``"a,b"`` -> [kind(a), kind(b)]; None stays None; a bad item is a ``UserError`` naming it."""
    if text is None:
        return None
    items = [item.strip() for item in text.split(",") if item.strip()]
    try:
        return [kind(item) for item in items]
    except ValueError:
        raise UserError(f"{what} must be a comma-separated list of {kind.__name__}, got {text!r}") from None


def new_output_file(name: str, option: str) -> Path:
    """``path`` checked before any work is done: a new file in an existing folder. An existing file
    is a ``UserError``: an output never replaces what a user has."""
    path = Path(name)
    if path.exists():
        raise UserError(f"{option} {path} already exists; give a new file name (nalign does not overwrite it)")
    if not path.parent.is_dir():
        raise UserError(f"{option} {path}: the folder {path.parent} does not exist")
    return path


def weight_overrides(pairs: list[str]) -> dict[str, dict[str, float]]:
    """``["wm.decay=5e-4", ...]`` -> {"wm": {"decay": 0.0005}}; a malformed pair is a ``UserError``."""
    weights: dict[str, dict[str, float]] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        rule, dot, primitive = key.strip().partition(".")
        try:
            number = float(value)
        except ValueError:
            sep = ""
        if not (sep and dot and rule and primitive):
            raise UserError(f"--weight takes RULE.PRIMITIVE=NUMBER (e.g. wm.decay=5e-4), got {pair!r}")
        weights.setdefault(rule, {})[primitive] = number
    return weights


def cmd_report(args: argparse.Namespace) -> int:
    """``nalign report RUN_DIR [RUN_DIR ...] --out DIR``: figures and a self-contained index.html."""
    from neural_alignment.analysis.report import build_report

    figures = build_report(
        args.runs, args.out, comma_list(args.layers, what="--layers"), comma_list(args.steps, int, "--steps")
    )
    for figure in figures:
        print(f"{Path(args.out) / figure.name}  {figure.title}")
    print(f"report: {Path(args.out) / 'index.html'}")
    return 0


def cmd_d1(args: argparse.Namespace) -> int:
    """``nalign analyze d1 [--rule NAME ...]``: appendix D.1 for each rule."""
    from neural_alignment.analysis import layerwise

    xs = comma_list(args.x, float, "--x")
    point = comma_list(args.at, float, "--at")
    if len(point) != 2:
        raise UserError(f"--at takes W,B (two numbers), got {args.at!r}")
    weights = weight_overrides(args.weight)
    rules = args.rule or list(layerwise.CLOSED_FORM_RULES)
    stray = sorted(set(weights) - set(rules))
    if stray:
        raise UserError(f"--weight names rule(s) {', '.join(stray)} that are not analysed; rules: {', '.join(rules)}")
    scalar_rules = [layerwise.scalar_rule(name, weights.get(name)) for name in rules]  # an unknown name fails here
    print(
        "D.1: symmetrized gradient flow d/dt (w, b) = -A (w, b) of a rule's R_l, scalar linear case "
        "(batch of one input x; no bias, layer-wise operations or input noise); A by autograd through the rule."
    )
    for rule in scalar_rules:
        analysis = layerwise.analyze(rule, xs, tuple(point))
        print(layerwise.format_analysis(analysis))
    return 0


def cmd_d2(args: argparse.Namespace) -> int:
    """``nalign analyze d2 [--rule NAME ...] [--plot [PNG]]``: appendix D.2 for each rule."""
    from neural_alignment.analysis import two_layer

    plot = new_output_file(args.plot, "--plot") if args.plot else None
    data = two_layer.ScalarData.sample(seed=args.seed)
    rules = [two_layer.registered_rule(name) for name in args.rule or two_layer.DEFAULT_RULES]
    print(
        f"D.2: two-layer scalar linear net on {len(data.x)} seeded points, a = mean(yx) = {data.a:.4g}, "
        f"s = mean(x^2) = {data.s:.4g}; minima on w1 w2 = a/s = {data.a / data.s:.4g}; B's flow at rate "
        f"{args.rate:g}. Jacobian of the real layers' flow at points of the hyperbola:"
    )
    for rule in rules:
        print(two_layer.format_fixed_points(rule, two_layer.fixed_points(rule, data, args.rate)))
    if plot:
        path = two_layer.plot_flows(rules, data, plot, args.rate, seed=args.seed)
        print(f"trajectories: {path}")
    return 0


def cmd_neural_fit(args: argparse.Namespace) -> int:
    """``nalign neural-fit RUN_DIR --layer NAME --data FILE.npz``: appendix B.5's fit, per-site r."""
    from neural_alignment.analysis import neural_fit
    from neural_alignment.training.trained import load_trained_model

    json_file = new_output_file(args.json, "--json") if args.json else None
    data = neural_fit.load_neural_data(args.data)
    model = load_trained_model(args.run)
    features = neural_fit.layer_features(model, args.layer, data.images)
    result = neural_fit.fit(features, data.responses, data.labels, data.trials, args.components, args.seed)
    print(
        f"layer {args.layer}: {features.shape[1]} features -> {len(result.r)} sites; PLS with "
        f"{result.n_components} components; {result.n_train} train / {result.n_test} held-out images "
        f"(seed {args.seed})"
    )
    print(f"median held-out Pearson r: {result.median_r:.4f}")
    if result.reliability is not None:
        print(
            f"median noise-corrected r: {result.median_corrected_r:.4f} "
            f"({result.unreliable_sites} sites with split-half reliability <= 0 left out)"
        )
    if json_file:
        write_text_atomically(
            json_file,
            json.dumps({"run": str(args.run), "layer": args.layer, "seed": args.seed, **result.as_dict()}, indent=2)
            + "\n",
        )
        print(f"per-site results: {json_file}", file=sys.stderr)
    return 0


def register(subparsers) -> None:
    """Add ``report``, ``analyze`` (``d1``, ``d2``) and ``neural-fit`` to the ``nalign`` subparsers."""
    report = subparsers.add_parser("report", help="figures of runs (curves, per-layer angles, W vs B) in one HTML page")
    report.add_argument("runs", metavar="RUN_DIR", nargs="+", help="run folders or 'nalign compare' output folders")
    report.add_argument("--out", metavar="DIR", required=True, help="output folder (index.html and the PNGs)")
    report.add_argument("--layers", metavar="A,B", help="layers of the W-vs-B scatter (default: first, middle, last)")
    report.add_argument("--steps", metavar="S1,S2", help="snapshot steps of the scatter (default: first, middle, last)")
    report.set_defaults(func=cmd_report)

    analyze = subparsers.add_parser("analyze", help="the appendix's dynamics analyses (d1, d2)")
    which = analyze.add_subparsers(dest="analysis", metavar="ANALYSIS", required=True)
    d1 = which.add_parser("d1", help="D.1: stability of a rule's layer-wise regularizer (scalar linear case)")
    d1.add_argument(
        "--rule", action="append", metavar="NAME", help="a registered rule (repeatable; default sa, aa, wm)"
    )
    d1.add_argument(
        "--weight",
        action="append",
        default=[],
        metavar="RULE.PRIMITIVE=NUMBER",
        help="override a rule's primitive weight, e.g. wm.decay=5e-4 (wm with alpha = beta)",
    )
    d1.add_argument("--x", default="0.5,1,2,4", help="inputs x to evaluate at (default 0.5,1,2,4)")
    d1.add_argument("--at", default="0.7,-0.4", metavar="W,B", help="the point (w, b) (default 0.7,-0.4)")
    d1.set_defaults(func=cmd_d1)
    d2 = which.add_parser("d2", help="D.2: two-layer scalar linear network under bp, fa, sa")
    d2.add_argument(
        "--rule", action="append", metavar="NAME", help="a registered rule (repeatable; default bp, fa, sa)"
    )
    d2.add_argument(
        "--rate",
        type=float,
        default=500.0,
        help="B's flow is -rate * dR/db (default 500: eq. 4's unit rate for sa's default weights)",
    )
    d2.add_argument("--seed", type=int, default=0, help="seed of the data and of the trajectories' starts")
    d2.add_argument(
        "--plot",
        nargs="?",
        const="d2-flows.png",
        metavar="PNG",
        help="integrate trajectories and draw them into this new file (default d2-flows.png)",
    )
    d2.set_defaults(func=cmd_d2)

    fit = subparsers.add_parser("neural-fit", help="B.5: fit a layer's features to neural responses (PLS, per-site r)")
    fit.add_argument("run", metavar="RUN_DIR", help="a trained run folder")
    fit.add_argument(
        "--layer", required=True, help="module name whose output is the features (e.g. 2 or features.block2)"
    )
    fit.add_argument(
        "--data", required=True, metavar="FILE.npz", help="images, responses, labels (and optionally trials)"
    )
    fit.add_argument("--components", type=int, default=25, help="PLS components (default 25)")
    fit.add_argument("--seed", type=int, default=0, help="seed of the 75/25 split within categories")
    fit.add_argument("--json", metavar="FILE", help="write the per-site results as JSON to this new file")
    fit.set_defaults(func=cmd_neural_fit)
