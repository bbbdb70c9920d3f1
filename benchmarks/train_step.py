"""Images per second of the real ``Trainer`` step, every rule against ``bp``, on one backend.

    python benchmarks/train_step.py [--backend cpu|cuda|xla] [--archs resnet18,convnet]
        [--image-size 64] [--resnet-batch 32] [--reps 10] [--seconds 240] [--autocast bfloat16] [--channels-last]
        [--spmd] [--rules fa,sa,kp]   (bp is always measured: it is the baseline)

One step is what ``nalign run`` does per step: forward, task and alignment losses, one backward,
both components' optimizer updates (the alignment optimizer too), the end of the step and a device
synchronisation. Each rule gets its own ``Trainer`` built from the recipe that trains it: on a
ResNet the rule's own ResNet-18 recipe ``imagenet-resnet18-<rule>`` (the appendix's B.2 set-up,
and D.3's for kp: B by W's Nesterov optimizer, the transposed update that makes Kolen-Pollack; the
base ``imagenet-resnet18`` with ``rule.name`` for a rule without one), with ``model.arch`` set; on
the demo convnet ``fmnist-convnet`` with the rule's ``by_rule`` settings. All on seeded synthetic
images of the same shape. All rules run in this process after a warm-up. In each repetition every
rule's step is timed right beside a bp step (the rules in a shuffled order, each pair in a random
order): the ratio is the median over repetitions of (rule step / the bp step beside it), so a slow
minute of a shared host's neighbours falls on both sides of a pair, printed with a bootstrap 95%
interval. ``bp again`` is a second bp ``Trainer`` measured the same way: its ratio is the noise
floor of the others. ``bp+B step`` is bp's step followed, on the clock, by one step of an
optimizer built like the alignment optimizer of sa's trainer (kp's without sa), over stand-ins of
B's sizes, each with a fixed gradient: the one update that rule cannot do without, so its ratio is
its floor on this host (on ResNet-18 sa's Adam; kp's momentum step moves one state tensor less; a
memory-bound pass beside compute-bound products: it moves with the host's memory bandwidth).
Before each repetition every trainer's parameters, buffers and optimizer state move to fresh
memory (``ops.relocate``: kept in place, one copy's placement would decide its ratio for the whole
run). Every timed step starts from the rule's initial weights (W the same for every rule;
restored, in place, outside the clock): trained on one batch over and over, each rule's model
would drift to a state of its own, and the CPU's data-dependent kernels (max-pooling, ReLU's
backward) then run at speeds of their own (fa's convnet step measured 1.07-1.11 of bp's that way,
1.02 from the same weights; the same steps with lr 0: 1.02). On the CPU the clock is the process's
CPU time with one thread (a shared machine's wall clock measures the neighbours); on a GPU or XLA
device the wall clock.

The bound is ``benchmarks/ops.py``'s (the products of the rule's alignment pass over native
backprop's, each weighted by its time alone on the cpu backend, by its multiply-adds on another;
bp is native). fa, sa and kp run no product bp does not (sa and kp add B's optimizer step, a
pass over the weights in the measured step here, and no other: the trainer points B.grad at W or
W.grad, see ``Trainer.point_backward_gradients``): each passes within 1.05 of bp. wm, ia and aa
pass within 1.15 of their bound.
"""

from __future__ import annotations

import argparse
import copy
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ops import RULES, bound, layer_costs, median_interval, module_tensors, paired_ratios

from neural_alignment.recipes.loader import load_recipe, recipe_files
from neural_alignment.training.trainer import Trainer

CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}
AT_BP, AT_BP_LIMIT = ("fa", "sa", "kp"), 1.05
"""The rules whose step runs bp's products and no others, and how far from bp's step they may be."""
CONTROL = "bp again"
"""A second bp trainer, timed against bp like every rule: the noise floor (its limit is bp's, not checked)."""
FLOOR = "bp+B step"
"""bp's step plus an alignment-optimizer step over stand-ins of B: sa's floor (kp's without sa; not checked)."""
REFERENCES = (CONTROL, FLOOR)


def recipe_of(arch: str, rule: str) -> str:
    """The recipe that trains ``rule`` on ``arch``: ``fmnist-convnet`` (its ``by_rule`` holds each rule's
    settings) for the convnet, else the rule's ResNet-18 recipe, or the base one for a rule without one."""
    if arch == "convnet":
        return "fmnist-convnet"
    own = f"imagenet-resnet18-{rule}"
    return own if own in recipe_files() else "imagenet-resnet18"


def overrides(arch: str, args) -> tuple[list[str], int]:
    """(overrides, batch) for ``arch`` on synthetic images."""
    if arch == "convnet":
        shape, classes, batch = [1, 28, 28], 10, args.convnet_batch
    else:
        size, batch = args.image_size, args.resnet_batch
        shape, classes = [3, size, size], 1000
    backend = {"autocast_dtype": args.autocast, "channels_last": args.channels_last, "spmd": args.spmd}
    backend = {k: v for k, v in backend.items() if v}
    return (
        [
            f"model.arch={arch}",
            "data.dataset=synthetic",
            "data.num_workers=0",
            f"data.batch_size={batch}",
            f"data.options={{shape: {shape}, num_classes: {classes}, train_size: {batch}, test_size: 8}}",
            "train.steps=null",  # one step per epoch (train_size = batch): the schedules' own unit
            "train.epochs=1000000",
            "log.loggers=[jsonl]",
            "train.progress=false",
            f"backend.name={args.backend}",
            f"backend.options={backend}",
        ],
        batch,
    )


def optimizer_state(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """An optimizer's state tensors (they appear at its first step)."""
    return [v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)]


def trainer_tensors(trainer: Trainer) -> list[torch.Tensor]:
    """The model's parameters and buffers and every optimizer's state tensors (what ``relocate`` moves)."""
    tensors = module_tensors(trainer.model)
    for component in trainer.components.values():
        if component is not None:
            tensors += optimizer_state(component.optimizer)
    return tensors


def with_backward_update(trainer: Trainer, like: Trainer) -> torch.optim.Optimizer:
    """Make ``trainer``'s step also take one step of an optimizer built like ``like``'s alignment
    optimizer (its class and settings, fused included) over stand-ins of ``like``'s trained B,
    each with a fixed gradient. Returns that optimizer."""
    alignment = like.components["alignment"]
    assert alignment is not None, "like has a trained B"
    stand_ins = [torch.nn.Parameter(torch.randn_like(B)) for B in alignment.params]
    for p in stand_ins:
        p.grad = torch.randn_like(p)
    optimizer = type(alignment.optimizer)(stand_ins, **alignment.optimizer.defaults)
    task_step = trainer.train_step

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        task_step(x, y)
        optimizer.step()

    trainer.train_step = step  # type: ignore[method-assign]
    return optimizer


def benchmark(arch: str, args, clock, folder: Path) -> bool:
    common, batch = overrides(arch, args)

    def trainer(rule: str, name: str) -> Trainer:
        return Trainer(load_recipe(recipe_of(arch, rule), [*common, f"rule.name={rule}"]), folder / f"{arch}-{name}")

    rules = ["bp", *(r for r in RULES if r != "bp" and r in args.rules)]
    trainers = {rule: trainer(rule, rule) for rule in rules}
    x, y = (torch.stack(t) for t in zip(*(trainers["bp"].splits.train[i] for i in range(batch)), strict=True))
    trainers[CONTROL] = trainer("bp", "bp-again")
    # sa's update where sa runs (Adam on ResNet-18, plain GD on the convnet), else kp's (W's momentum optimizer)
    like = next((trainers[r] for r in ("sa", "kp") if r in trainers and trainers[r].components["alignment"]), None)
    stand_in_update = None
    if like is not None:
        trainers[FLOOR] = trainer("bp", "bp-B-step")
        stand_in_update = with_backward_update(trainers[FLOOR], like)

    def tensors() -> list[list[torch.Tensor]]:
        """Every trainer's tensors and the stand-in update's parameters, gradients and state."""
        groups = [trainer_tensors(trainer) for trainer in trainers.values()]
        if stand_in_update is not None:
            stand_ins = [p for group in stand_in_update.param_groups for p in group["params"]]
            groups.append([*stand_ins, *(p.grad for p in stand_ins), *optimizer_state(stand_in_update)])
        return groups

    initial = {rule: copy.deepcopy(trainer.model.state_dict()) for rule, trainer in trainers.items()}

    def step_seconds(rule: str) -> float:
        trainers[rule].model.load_state_dict(initial[rule])  # in place: the same tensors every step
        (seconds,) = trainers[rule].time_steps(x, y, 1, clock)
        return seconds

    compared = [name for name in REFERENCES if name in trainers] + rules[1:]
    times, ratios, reps = paired_ratios(
        compared,
        "bp",
        step_seconds,
        tensors,  # called before each repetition: optimizer state appears in step 1
        random.Random(0),
        args.warmup,
        args.reps,
        args.seconds,
    )
    rng = random.Random(1)  # the intervals' resampling
    base = statistics.median(times["bp"])
    shape = "x".join(str(d) for d in x.shape)
    print(f"\n{arch}, batch {shape}: bp step {base * 1e3:.1f} ms, {batch / base:.1f} images/s (median of {reps})")
    print(f"{'rule':<10}{'images/s':>10}{'ratio':>8}{'95% interval':>16}{'bound':>8}{'limit':>8}  ok")
    all_ok = True
    bp = trainers["bp"]
    # each product timed alone on the cpu; elsewhere (lazy XLA, asynchronous CUDA) weighted by its multiply-adds
    weights = "time" if args.backend == "cpu" else "macs"
    with torch.no_grad():
        costs = layer_costs(bp.model, bp.backend.to_device(x.to(bp.dtype)), clock, weights)
    for rule in ["bp", *compared]:
        ratio = statistics.median(ratios[rule]) if rule != "bp" else 1.0
        low, high = median_interval(ratios[rule], rng) if rule != "bp" else (1.0, 1.0)
        b = bound(trainers[rule].model, costs)
        limit = AT_BP_LIMIT if rule in AT_BP else 1.15 * b
        ok = ratio <= limit
        all_ok &= ok or rule in REFERENCES
        print(
            f"{rule:<10}{batch / statistics.median(times[rule]):>10.1f}{ratio:>8.3f}  {low:>6.3f}-{high:<6.3f}"
            f"{b:>8.3f}{limit:>8.3f}  "
            f"{'yes' if ok else 'NO'}"
        )
    return all_ok


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="cpu", help="cpu, cuda, xla (any registered backend)")
    parser.add_argument("--archs", default="resnet18,convnet", help="comma-separated: resnet18, resnet50, convnet")
    parser.add_argument("--image-size", type=int, default=64, help="ResNet input size (224 on a GPU)")
    parser.add_argument("--resnet-batch", type=int, default=32)
    parser.add_argument("--convnet-batch", type=int, default=128)
    parser.add_argument("--rules", default=",".join(RULES), type=lambda s: s.split(","), help="bp is always in")
    parser.add_argument("--reps", type=int, default=10, help="timed repetitions per rule, at least")
    parser.add_argument(
        "--seconds", type=float, default=240.0, help="per architecture: repeat while it fits in about this long"
    )
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (CPU)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), help="default: cpu on the cpu backend, else wall")
    parser.add_argument("--autocast", help="autocast dtype, e.g. bfloat16")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--spmd", action="store_true", help="xla: the batch sharded over every device (SPMD)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    clock_name = args.clock or ("cpu" if args.backend == "cpu" else "wall")
    print(
        f"torch {torch.__version__}, backend {args.backend}, {torch.get_num_threads()} thread(s), "
        f"autocast {args.autocast or 'off'}, channels_last {args.channels_last}, spmd {args.spmd}, {clock_name} clock"
    )
    ok = True
    with tempfile.TemporaryDirectory() as folder:
        for arch in args.archs.split(","):
            ok &= benchmark(arch.strip(), args, CLOCKS[clock_name], Path(folder))
    print("\nall within their limits" if ok else "\nsome rule is over its limit")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
