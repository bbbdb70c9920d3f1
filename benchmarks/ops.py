"""Step time of every built-in rule relative to native backprop, with the bound its extra products set.

    python benchmarks/ops.py [--threads 1] [--reps 15] [--seconds 60] [--clock cpu|wall] [--resnet-batch 32]
        [--only NAME,...]

One training step is: forward, task loss, the rule's alignment loss, and ONE backward of
(task + alignment), then the gradient of the kernels' quadratic forms (decay, self) added in
closed form, as the trainer's step does (``add_weight_gradients``; no optimizer update: both
sides would pay the same). The native side is
the same network of torch layers and plain backprop. The networks: ResNet-18 and an MLP (Linear,
Conv2d), a 1-d convnet (Conv1d), a 3-d convnet (Conv3d), a decoder (ConvTranspose2d) and the
``fmnist-vit`` vision transformer (MultiheadAttention, Linear, Conv2d). All sides run in this
process after a warm-up, with the same thread count; in each repetition every rule's step is
timed right beside a native step (the rules in a shuffled order, each pair in a random order),
and the ratio is the median over repetitions of (rule step / the native step beside it), printed
with a bootstrap 95% interval of that median. ``bp`` (the aligned layers with B = W implicitly:
plain torch ops) is the noise floor. Before each repetition every side's parameters and buffers
move to fresh memory, the sides in a random order with allocations of random size between them
(``relocate``): where a tensor lies decides how its loads hit the caches, and two copies of one
native network kept in place ran 1-4% apart for a whole run on the 2-core development machine
(the same network relocated each repetition: within 1.6% over three runs). The clock is the
process's CPU time by default, with one thread: on a
shared machine the wall clock (and, with several threads, OpenMP barriers waiting for a
descheduled thread) measures the neighbours, not the step.

The bound: a native step runs 3 products per layer: the forward (conv(x, W), x W^T), the input
gradient dx (the adjoint product: a transposed convolution, dy W) and the kernel gradient dW (2
for a layer whose input needs no gradient, like the first; the attention itself, softmax(q k^T) v,
is not a layer product and no rule changes it, so the bound leaves it out). A rule adds, per
layer, what its alignment pass runs (``AlignmentContext`` decides), each a product of one of
those three kinds on the layer's own shapes:

    fp  project(x, W)                          forward (none when it reuses the layer's output)
    bp  project(x, B), and dB                  forward + kernel (kernel alone where only an
                                               inner product reads it: ``bp_by_kernel_product``)
    fr  reconstruct(fp, B), and dB             input + kernel
    br  reconstruct(bp, W), and its d(bp)      input + forward

    bound = sum_l [native_l + extra_l] / sum_l native_l

with every product weighted by its cost on this machine: by default its measured time (the
median of a few runs of that product alone, on the layer's input from one forward, with the
benchmark's clock), so a product that is slow here (on one CPU core a strided 3-d convolution's
adjoint takes about 3.5 times its forward) counts as slow for native backprop and for the rule
alike; with ``weights="macs"`` (devices whose ops run lazily, such as XLA) every product of a
layer counts its multiply-adds, macs_l = (output elements) x (W's entries per output channel),
for a transposed convolution (input elements) x (W's entries per input channel).

The bound counts products only: the O(parameters) terms (decay, self, the transported KP
update) are free in it, which holds when each weight serves many positions and examples.
They are memory-bound passes over every weight, a fixed cost per step (about 40-60 ms for
ResNet-18's 11.7M weights on one core of the 2-core development machine) whatever the
batch; at 64x64 inputs ResNet-18's last stage sees 2x2 positions, so the ResNet batch
(default 32, ``--resnet-batch``) decides how large that fixed cost looks: at batch 16 sa
measured 1.13-1.24x of native.

A rule passes when its ratio is within 1.05 of native (``fa``, which adds nothing) or within
1.15 of its bound (the others).
"""

from __future__ import annotations

import argparse
import copy
import random
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from neural_alignment import add_weight_gradients, alignment_loss, convert
from neural_alignment.core.context import AlignmentContext
from neural_alignment.core.layers import aligned_layers
from neural_alignment.core.primitives import PairedPrimitive
from neural_alignment.registry import get_registry

RULES = ("bp", "fa", "wm", "ia", "sa", "aa", "kp")
FIELD_PRODUCTS = {
    "fp": ("forward",),
    "bp": ("forward", "kernel"),
    "fr": ("input", "kernel"),
    "br": ("input", "forward"),
}
"""The products each field of the alignment pass runs, forward and backward (see the module docstring)."""
FIELD_DEPENDS = {"fr": "fp", "br": "bp"}
CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}
FA_LIMIT = 1.05


def native_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    F.cross_entropy(model(x), y).backward()


def aligned_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    task = F.cross_entropy(model(x), y)
    (task + alignment_loss(model, weight_terms=False)).backward()
    add_weight_gradients(model)


def extra_products(layer) -> list[str]:
    """The products (their kinds) the rule's alignment pass adds to this layer's step."""
    rule = layer.rule
    if layer.backward_weight is None:
        return []
    fields = set()
    for name, primitive in rule.primitives.items():
        if primitive.in_backward or rule.coefficient(name, layer.epoch) == 0.0:
            continue
        if isinstance(primitive, PairedPrimitive):
            fields |= {f for f in (primitive.p, primitive.q) if f in FIELD_PRODUCTS}
    fields |= {FIELD_DEPENDS[f] for f in fields if f in FIELD_DEPENDS}
    ctx = AlignmentContext(layer, rule)
    if ctx.reuses_output:
        fields.discard("fp")
    products = {**FIELD_PRODUCTS, "bp": ("kernel",)} if ctx.bp_by_kernel_product else FIELD_PRODUCTS
    return [product for f in sorted(fields) for product in products[f]]


def relocate(groups: list[list[torch.Tensor]], rng: random.Random) -> None:
    """Move every tensor's data to fresh memory, in place (each tensor keeps its identity, so
    optimizers and modules still hold it): the groups in a random order, an allocation of random
    size (up to 64 KiB) before each tensor and freed after, so every repetition sees a new
    placement of each side's weights relative to the others and to the cache sets."""
    spacers = []
    for group in rng.sample(groups, len(groups)):
        for t in group:
            spacers.append(torch.empty(rng.randrange(1, 1 << 14)))
            t.data = t.data.clone()
    del spacers


def module_tensors(model: nn.Module) -> list[torch.Tensor]:
    """A module's parameters and buffers (what ``relocate`` moves)."""
    return [*model.parameters(), *model.buffers()]


def median_interval(values: list[float], rng: random.Random, resamples: int = 2000) -> tuple[float, float]:
    """A bootstrap 95% interval of the median of ``values`` (percentiles of resampled medians)."""
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples))
    return medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]


def paired_ratios(
    compared: list[str],
    baseline: str,
    step_seconds: Callable[[str], float],
    tensors: Callable[[], list[list[torch.Tensor]]],
    rng: random.Random,
    warmup: int,
    reps: int,
    seconds: float,
) -> tuple[dict[str, list[float]], dict[str, list[float]], int]:
    """(times, ratios, repetitions): each repetition relocates ``tensors()``, then times every
    compared side right beside a ``baseline`` step (the sides in a shuffled order, each pair in a
    random order); ``ratios[name]`` holds (its step / the baseline step beside it). ``reps``
    repetitions at least, more while they fit in about ``seconds`` (a repetition's length from the
    ``warmup`` repetitions, which are not recorded): the per-step jitter of a shared host weighs
    most on short steps, and those are cheap to repeat."""
    times: dict[str, list[float]] = {name: [] for name in [baseline, *compared]}
    ratios: dict[str, list[float]] = {name: [] for name in compared}
    order = list(compared)
    warm: list[float] = []

    def repetition(recorded: bool) -> None:
        relocate(tensors(), rng)
        rng.shuffle(order)  # no side always runs right after the same neighbour
        for name in order:
            pair = [baseline, name] if rng.random() < 0.5 else [name, baseline]
            step = {side: step_seconds(side) for side in pair}
            if not recorded:
                warm.append(step[baseline])
                continue
            ratios[name].append(step[name] / step[baseline])
            for side in pair:
                times[side].append(step[side])

    for _ in range(warmup):
        repetition(recorded=False)
    if warm:
        reps = max(reps, int(seconds / (2 * len(compared) * statistics.median(warm))))
    for _ in range(reps):
        repetition(recorded=True)
    return times, ratios, reps


def median_seconds(run, clock, reps: int = 5) -> float:
    run()  # warm-up
    seconds = []
    for _ in range(reps):
        start = clock()
        run()
        seconds.append(clock() - start)
    return statistics.median(seconds)


def measured_costs(layer, clock) -> dict[str, float]:
    """Seconds of the layer's three native products alone, on its latest forward's input: the
    forward project(x, W), the input product reconstruct(dy, W) (the adjoint: dx's) and the kernel
    product dW (the time of project with dW, less the forward's)."""
    x = layer.last_input
    W = layer.weight.detach()
    kernel = W.clone().requires_grad_()
    with torch.no_grad():
        dy = torch.randn_like(layer.project(x, W))

    def forward():
        with torch.no_grad():
            layer.project(x, W)

    def adjoint():
        with torch.no_grad():
            layer.reconstruct(dy, W, x)

    def with_kernel_gradient():
        with torch.enable_grad():
            torch.autograd.grad(layer.project(x, kernel), kernel, dy)

    f = median_seconds(forward, clock)
    return {
        "forward": f,
        "input": median_seconds(adjoint, clock),
        "kernel": max(median_seconds(with_kernel_gradient, clock) - f, 0.0),
    }


def macs_costs(layer) -> dict[str, float]:
    """Every product of the layer weighted by its multiply-adds (the same for the three kinds)."""
    transposed = getattr(layer, "transposed", False)
    macs = float((layer.last_input if transposed else layer.last_output).numel() * layer.weight[0].numel())
    return dict.fromkeys(("forward", "input", "kernel"), macs)


def layer_costs(model: nn.Module, x: torch.Tensor, clock=time.process_time, weights: str = "time") -> dict:
    """{layer name: (its products' costs, whether its input needs a gradient)} over one forward of
    ``x``; each product's cost its time measured with ``clock`` (``weights="time"``) or its
    multiply-adds (``"macs"``). The same for every rule's copy of a network: measure once."""
    layers = dict(aligned_layers(model))
    needs_dx = {}
    hooks = [
        m.register_forward_pre_hook(lambda m, args, name=name: needs_dx.__setitem__(name, args[0].requires_grad))
        for name, m in layers.items()
    ]
    model(x)
    for hook in hooks:
        hook.remove()
    return {
        name: (measured_costs(m, clock) if weights == "time" else macs_costs(m), needs_dx[name])
        for name, m in layers.items()
    }


def bound(model: nn.Module, costs: dict) -> float:
    """sum_l (native_l + extra_l) / sum_l native_l: native_l the cost of layer l's forward, dW and
    (when its input needs a gradient, not the first layer) dx, extra_l that of the products the
    rule's alignment pass adds (``costs``: :func:`layer_costs` of the network)."""
    native_total = extra_total = 0.0
    for name, m in aligned_layers(model):
        cost, needs_dx = costs[name]
        native_total += cost["forward"] + cost["kernel"] + (cost["input"] if needs_dx else 0.0)
        extra_total += sum(cost[product] for product in extra_products(m))
    return (native_total + extra_total) / native_total


def clear_grads(model: nn.Module) -> None:
    for p in model.parameters():
        p.grad = None


def timed(step, model, x, y, clock) -> float:
    clear_grads(model)
    start = clock()
    step(model, x, y)
    return clock() - start


def benchmark(
    title: str, native: nn.Module, x: torch.Tensor, y: torch.Tensor, reps: int, warmup: int, clock, seconds: float
) -> bool:
    """Time every rule beside native backprop; ``reps`` repetitions at least, more while they fit
    in about ``seconds`` (a repetition's length measured in the warm-up), and print the table."""
    variants = {"native": (copy.deepcopy(native), native_step)}  # every side a copy: same allocation history
    for name in RULES:
        variants[name] = (convert(copy.deepcopy(native), rule=name), aligned_step)
    placed = [module_tensors(model) for model, _ in variants.values()]
    times, ratios, reps = paired_ratios(
        list(RULES),
        "native",
        lambda side: timed(variants[side][1], variants[side][0], x, y, clock),
        lambda: placed,
        random.Random(0),
        warmup,
        reps,
        seconds,
    )
    rng = random.Random(1)  # the intervals' resampling
    costs = layer_costs(variants["bp"][0], x, clock)
    base = statistics.median(times["native"])
    print(f"\n{title}: native step {base * 1e3:.1f} ms (median of {reps})")
    print(f"{'rule':<6}{'ratio':>8}{'95% interval':>16}{'bound':>8}  {'limit':>8}  ok")
    all_ok = True
    for name in RULES:
        model = variants[name][0]
        ratio = statistics.median(ratios[name])
        low, high = median_interval(ratios[name], rng)
        b = bound(model, costs)
        limit = FA_LIMIT if name == "fa" else 1.15 * b
        ok = ratio <= limit
        all_ok &= ok
        print(f"{name:<6}{ratio:>8.3f}  {low:>6.3f}-{high:<6.3f}{b:>8.3f}  {limit:>8.3f}  {'yes' if ok else 'NO'}")
    return all_ok


def networks(resnet_batch: int) -> dict[str, tuple[str, nn.Module, torch.Tensor, int]]:
    """{name: (title, native network, input batch, classes)}."""
    architectures = get_registry().catalog("architectures")
    n = resnet_batch
    signal = nn.Sequential(  # an audio-like 1-d signal
        nn.Conv1d(16, 64, 9, padding=4),
        nn.ReLU(),
        nn.Conv1d(64, 128, 9, stride=2, padding="valid"),
        nn.ReLU(),
        nn.Conv1d(128, 128, 3, padding="same", dilation=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool1d(1),
        nn.Flatten(),
        nn.Linear(128, 10),
    )
    volume = nn.Sequential(  # a small 3-d volume
        nn.Conv3d(4, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv3d(32, 64, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool3d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    )
    decoder = nn.Sequential(  # a DCGAN-like generator's upsampling
        nn.ConvTranspose2d(128, 64, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 32 * 32, 10),
    )
    vit = architectures.get("vit")(10, (1, 28, 28), patch=7, dim=64, depth=2, heads=4, mlp_ratio=2)
    return {
        "resnet18": (
            f"ResNet-18, {n} x 3 x 64 x 64",
            architectures.get("resnet18")(num_classes=100, in_shape=(3, 64, 64)),
            torch.randn(n, 3, 64, 64),
            100,
        ),
        "mlp": (
            "MLP 784-1024-1024-10, batch 1024",
            architectures.get("mlp")(num_classes=10, in_shape=(1, 28, 28), hidden=(1024, 1024)),
            torch.randn(1024, 1, 28, 28),
            10,
        ),
        "conv1d": ("Conv1d net 16-64-128-128 (k 9, 9, 3), 32 x 16 x 1024", signal, torch.randn(32, 16, 1024), 10),
        "conv3d": ("Conv3d net 4-32-64 (k 3), 8 x 4 x 24^3", volume, torch.randn(8, 4, 24, 24, 24), 10),
        "convtranspose2d": (
            "ConvTranspose2d decoder 128-64-32 (k 4, s 2), 32 x 128 x 8 x 8",
            decoder,
            torch.randn(32, 128, 8, 8),
            10,
        ),
        "vit": (
            "fmnist-vit (7x7 patches, width 64, 2 blocks of 4 heads), 128 x 1 x 28 x 28",
            vit,
            torch.randn(128, 1, 28, 28),
            10,
        ),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads, the same for every side")
    parser.add_argument("--reps", type=int, default=15, help="timed repetitions per variant, at least (the MLP: twice)")
    parser.add_argument(
        "--seconds", type=float, default=60.0, help="per network: more repetitions while they fit in about this long"
    )
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="cpu")
    parser.add_argument("--resnet-batch", type=int, default=32, help="ResNet-18 batch (64x64 inputs)")
    parser.add_argument("--only", default="", help="comma-separated networks (default: all)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    clock = CLOCKS[args.clock]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), float32, CPU, {args.clock} clock")
    nets = networks(args.resnet_batch)
    chosen = [name for name in args.only.split(",") if name] or list(nets)
    unknown = sorted(set(chosen) - set(nets))
    if unknown:
        parser.error(f"--only: unknown network(s) {', '.join(unknown)}; valid: {', '.join(nets)}")
    ok = True
    for name in chosen:
        title, native, x, classes = nets[name]
        reps = 2 * args.reps if name == "mlp" else args.reps
        y = torch.randint(0, classes, (x.shape[0],))
        ok &= benchmark(title, native, x, y, reps, args.warmup, clock, args.seconds)
    print("\nall within their limits" if ok else "\nsome rule is over its limit")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
