"""The rules a biotorch user knows, here and in biotorch, side by side on one small convnet.

    python benchmarks/peers.py [--rules bp,fa,usf,brsf,frsf,dfa] [--seeds 0] [--epochs 1]
                               [--train-limit 10000] [--test-limit N] [--batch-size 64] [--threads 1]

For each rule and seed: one plain torch convnet (``convnet``: conv3x3-BN-ReLU-maxpool blocks,
channels 16, 32, then a Linear classifier) is built from the seed and copied twice; one copy is
converted here (``convert_modules`` with the rule: fa, bp built in, usf/brsf/frsf from
examples/plugin-sign-symmetry, dfa from examples/plugin-direct-feedback, loaded through their
hooks whether installed or not), the other by biotorch 0.0.16 (``BioModule(mode=rule,
copy_weights=True)``; ``backpropagation`` for bp). Both start from the same W, see the same
batches in the same order (Fashion-MNIST when /usr/share/datasets/fashion-mnist exists, else
scikit-learn's digits; the first ``--train-limit`` training examples) and train with the same
SGD (lr 0.05, momentum 0.9) on W, biases and BatchNorm, one step of each library after the
other, alternating which goes first.

Printed per rule: test accuracy (the whole test split, after training; mean and, with several
seeds, the range over seeds), the weight angle
(degrees between vec(W) and vec(B) of the B the last backward used, mean over layers; biotorch's
frsf keeps |B| in ``weight_backward`` and multiplies by sign(W) in the forward, so the angle is
taken with |B| sign(W); none for dfa, whose feedback matrices do not have W's shape), and the
median step time (process CPU time, one thread by default) of each and their ratio. The B
each side draws differs (biotorch Glorot-uniform at the initialiser's scale, here at W's norm;
dfa's conv feedback is convolutional in biotorch, dense here), so accuracies agree only up to
the spread of seeds.

biotorch is a peer, not a dependency: without it (``pip install --no-deps biotorch==0.0.16``)
its columns are skipped with a message and ours still run.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import io
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from neural_alignment.core.convert import convert_modules
from neural_alignment.core.layers import aligned_layers
from neural_alignment.core.metrics import angle_degrees
from neural_alignment.core.rules import build_rule
from neural_alignment.registry import Registry, get_registry

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = {
    "neural_alignment_sign_symmetry": "plugin-sign-symmetry",
    "neural_alignment_direct_feedback": "plugin-direct-feedback",
}
FMNIST = Path("/usr/share/datasets/fashion-mnist")
RULES = ("bp", "fa", "usf", "brsf", "frsf", "dfa")
PEER_MODE = {"bp": "backpropagation"}


def example_plugins() -> list:
    """The example plugin modules: installed ones, else from their source folders."""
    modules = []
    for module, folder in EXAMPLES.items():
        try:
            modules.append(importlib.import_module(module))
        except ImportError:
            sys.path.insert(0, str(ROOT / "examples" / folder))
            modules.append(importlib.import_module(module))
    return modules


def load_biotorch():
    """biotorch's BioModule, or None with a message when it is not installed."""
    try:
        from biotorch.module.biomodule import BioModule
    except ImportError as exc:
        print(f"peer biotorch skipped: {exc} (pip install --no-deps biotorch==0.0.16)")
        return None
    return BioModule


def load_data(train_limit: int, test_limit: int | None):
    """(train x, train y, test x, test y, dataset name, classes) as tensors (the first examples of each split)."""
    datasets = get_registry().catalog("datasets")
    if FMNIST.is_dir():
        splits, name = datasets.get("fashion_mnist")(root=str(FMNIST)), "fashion_mnist"
    else:
        splits, name = datasets.get("digits")(), "digits"
    train_x, train_y = (
        torch.stack(t) for t in zip(*[splits.train[i] for i in range(min(train_limit, len(splits.train)))], strict=True)
    )
    test_count = len(splits.test) if test_limit is None else min(test_limit, len(splits.test))
    test_x, test_y = (torch.stack(t) for t in zip(*[splits.test[i] for i in range(test_count)], strict=True))
    return train_x, train_y, test_x, test_y, name, splits.num_classes


class Side:
    """One library's model on one rule: its step, its timing, its metrics."""

    def __init__(self, model: nn.Module, step, weight_pairs):
        self.model, self.step_fn, self.weight_pairs = model, step, weight_pairs
        self.optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
        self.times: list[float] = []

    def step(self, x, y) -> None:
        start = time.process_time()
        self.optimizer.zero_grad()
        self.step_fn(x, y)
        self.optimizer.step()
        self.times.append(time.process_time() - start)

    def accuracy(self, x, y, batch: int = 1000) -> float:
        self.model.eval()
        with torch.no_grad():
            correct = sum(
                (self.model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum().item()
                for i in range(0, len(x), batch)
            )
        self.model.train()
        return correct / len(x)

    def weight_angle(self) -> float | None:
        pairs = self.weight_pairs()
        return None if not pairs else statistics.fmean(angle_degrees(W, B) for W, B in pairs)


def ours(model: nn.Module, rule_name: str, registry: Registry) -> Side:
    rule = build_rule(registry.get("rules", rule_name), registry.catalog("primitives"))
    model = convert_modules(model, rule, [registry.get("ops", op) for op in registry.catalog("ops")])

    def step(x, y):
        F.cross_entropy(model(x), y).backward()

    def pairs():
        if rule_name in ("bp", "dfa"):
            return [] if rule_name == "dfa" else [(m.weight, m.weight) for _, m in aligned_layers(model)]
        return [(m.weight, m.backward_weight) for _, m in aligned_layers(model)]

    return Side(model, step, pairs)


def theirs(model: nn.Module, rule_name: str, BioModule, classes: int) -> Side:
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bio = BioModule(model, mode=PEER_MODE.get(rule_name, rule_name), copy_weights=True, output_dim=classes)

    def step(x, y):
        if rule_name == "dfa":
            F.cross_entropy(bio(x, targets=y, loss_function=F.cross_entropy), y).backward()
        else:
            F.cross_entropy(bio(x), y).backward()

    def pairs():
        if rule_name == "dfa":
            return []
        found = []
        for m in bio.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                B = getattr(m, "weight_backward", None)
                B = m.weight if B is None else (B.abs() * torch.sign(m.weight) if rule_name == "frsf" else B)
                found.append((m.weight, B))
        return found

    return Side(bio, step, pairs)


def build_convnet(classes: int, in_shape, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return get_registry().get("architectures", "convnet")(classes, in_shape, channels=(16, 32))


def run(rule: str, seed: int, data, args, registry, BioModule) -> dict:
    train_x, train_y, test_x, test_y, _, classes = data
    base = build_convnet(classes, tuple(train_x.shape[1:]), seed)
    sides = {"ours": ours(copy.deepcopy(base), rule, registry)}
    if BioModule is not None:
        sides["biotorch"] = theirs(copy.deepcopy(base), rule, BioModule, classes)
    order = torch.Generator().manual_seed(seed)
    step = 0
    for _ in range(args.epochs):
        perm = torch.randperm(len(train_x), generator=order)
        for i in range(0, len(perm) - args.batch_size + 1, args.batch_size):
            idx = perm[i : i + args.batch_size]
            names = list(sides) if step % 2 == 0 else list(sides)[::-1]
            for name in names:
                torch.manual_seed(seed * 100_003 + step)  # brsf's draws: the same stream for each side
                sides[name].step(train_x[idx], train_y[idx])
            step += 1
    return {
        name: {
            "acc": side.accuracy(test_x, test_y),
            "angle": side.weight_angle(),
            "ms": 1000 * statistics.median(side.times[1:]),
        }
        for name, side in sides.items()
    }


def fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def spread(values: list[float]) -> str:
    """``mean (min-max)`` over seeds, or ``-`` without values."""
    if not values:
        return "-"
    mean = statistics.fmean(values)
    return f"{mean:.4f}" if len(values) == 1 else f"{mean:.4f} ({min(values):.3f}-{max(values):.3f})"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rules", default=",".join(RULES))
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--train-limit", type=int, default=10000)
    parser.add_argument("--test-limit", type=int, default=None, help="default: the whole test split")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    # biotorch's dfa layers use Module.register_backward_hook, which torch now warns about every step
    warnings.filterwarnings("ignore", message="Using a non-full backward hook")
    torch.set_num_threads(args.threads)
    registry = Registry(autoload=False, extra_plugins=example_plugins())
    BioModule = load_biotorch()
    data = load_data(args.train_limit, args.test_limit)
    seeds = [int(s) for s in args.seeds.split(",")]
    print(
        f"# {data[4]}: {len(data[0])} training examples, {len(data[2])} test; convnet channels 16,32 + BN; "
        f"batch {args.batch_size}, {args.epochs} epoch(s), seeds {seeds}, {args.threads} thread(s), "
        f"torch {torch.__version__}"
    )
    print(
        "| rule | test acc ours | test acc biotorch | weight angle ours | weight angle biotorch "
        "| ms/step ours | ms/step biotorch | time ours/biotorch |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for rule in args.rules.split(","):
        results = [run(rule, seed, data, args, registry, BioModule) for seed in seeds]

        def values(side, key, results=results):
            return [r[side][key] for r in results if side in r and r[side][key] is not None]

        def mean(side, key):
            found = values(side, key)
            return statistics.fmean(found) if found else None

        ours_ms, peer_ms = mean("ours", "ms"), mean("biotorch", "ms")
        ratio = None if peer_ms is None else ours_ms / peer_ms
        print(
            f"| {rule} | {spread(values('ours', 'acc'))} | {spread(values('biotorch', 'acc'))} "
            f"| {fmt(mean('ours', 'angle'), '.1f')} | {fmt(mean('biotorch', 'angle'), '.1f')} "
            f"| {fmt(ours_ms, '.2f')} | {fmt(peer_ms, '.2f')} | {fmt(ratio, '.2f')} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
