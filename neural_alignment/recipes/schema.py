"""The recipe schema: OmegaConf structured dataclasses, one per section.

A recipe YAML file is merged onto ``Recipe``; a key the schema does not know or a value of
the wrong type is an error naming the full key path (see ``recipes.loader``). A field's
``metadata["valid"]`` is a :class:`Check` of its values (for a list: of each item), applied by
``recipes.loader.check_values`` when the recipe is loaded; ``valid(...)`` declares it:
``batch_size: int = field(default=128, metadata=valid(at_least(1)))``.
Learning-rate schedules (``optim.*.schedule``) and rule coefficient schedules
(``rule.schedules``) are configs for ``core.schedules.make_schedule``: a mapping
``{kind: ..., ...}`` or a list of them (a list multiplies).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from neural_alignment.core.rules import NOISE_DISTRIBUTIONS
from neural_alignment.runtime.optim import OPTIMIZERS


class Check:
    """What values a schema field takes: :meth:`problem` says why a value is not one of them."""

    def problem(self, value: Any) -> str | None:
        """``None`` for a valid value, else one line naming the value and what would be valid."""
        raise NotImplementedError


@dataclass(frozen=True)
class Range(Check):
    """Finite numbers with ``low <= value`` (``<`` when ``low_open``) and ``value < high``
    (``<=`` when ``high_closed``)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_closed: bool = False

    def problem(self, value: Any) -> str | None:
        number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        ok = (
            number
            and (self.low is None or (value > self.low if self.low_open else value >= self.low))
            and (self.high is None or (value <= self.high if self.high_closed else value < self.high))
        )
        return None if ok else f"{value!r} is out of range; valid: {self}"

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low}"
        return f"{'(' if self.low_open else '['}{self.low}, {self.high}{']' if self.high_closed else ')'}"


@dataclass(frozen=True)
class OneOf(Check):
    """One of a fixed set of names."""

    names: Sequence[str]

    def problem(self, value: Any) -> str | None:
        return None if value in self.names else f"{value!r} is not one of {', '.join(self.names)}"


@dataclass(frozen=True)
class Registered(Check):
    """A name registered in the plugin registry's catalog ``kind`` (rules, datasets...)."""

    kind: str

    def problem(self, value: Any) -> str | None:
        from neural_alignment.registry import get_registry

        catalog = get_registry().catalog(self.kind)
        return None if isinstance(value, str) and value in catalog else catalog.unknown_message(value)


@dataclass(frozen=True)
class FloatDtype(Check):
    """The name of a torch floating dtype (float32, float64, bfloat16, half...)."""

    def problem(self, value: Any) -> str | None:
        import torch

        dtype = getattr(torch, str(value), None)
        ok = isinstance(dtype, torch.dtype) and dtype.is_floating_point
        return None if ok else f"{value!r} is not a torch floating dtype (float32, float64, bfloat16...)"


@dataclass(frozen=True)
class Text(Check):
    """A string (OmegaConf lets a list into a ``List[str]`` item)."""

    def problem(self, value: Any) -> str | None:
        return None if isinstance(value, str) else f"{value!r} is not a name (a string)"


@dataclass(frozen=True)
class OptionsByName(Check):
    """A mapping from a name (a logger...) to the mapping of that one's keyword options."""

    def problem(self, value: Any) -> str | None:
        for name, options in value.items():
            if options is not None and not hasattr(options, "items"):
                return f"the options of {name!r} must be a mapping (key: value, ...), not {options!r}"
        return None


@dataclass(frozen=True)
class RayResources(Check):
    """Ray resources per trial: ``{name: amount}`` with ``cpu``, ``gpu``, ``memory`` (bytes) or a
    resource a node declares (``TPU``, a custom name); amounts >= 0, a fraction only below 1 (Ray's
    rule), at least one above 0."""

    def problem(self, value: Any) -> str | None:
        if not hasattr(value, "items"):
            return f"{value!r} is not a mapping of Ray resources (e.g. {{cpu: 1, gpu: 1}})"
        for name, amount in value.items():
            if name in ("CPU", "GPU"):
                return f"write {name.lower()!r}, not {name!r} (Ray's own spelling of the built-in resources)"
            number = isinstance(amount, (int, float)) and not isinstance(amount, bool) and math.isfinite(amount)
            if not number or amount < 0 or (amount > 1 and amount != int(amount)):
                return f"{name}: {amount!r} is not an amount of a Ray resource (>= 0; above 1 a whole number)"
        if not any(amount > 0 for amount in value.values()):
            return f"{dict(value)!r} asks for nothing; a trial needs some resource, e.g. {{cpu: 1}}"
        return None


def at_least(low: float) -> Range:
    return Range(low)


def above(low: float) -> Range:
    return Range(low, low_open=True)


def valid(check: Check) -> dict:
    """A field's ``metadata``: its values must pass ``check``."""
    return {"valid": check}


MAX_SEED = 2**32 - 1


@dataclass
class ModelConfig:
    """``arch``: a registered architecture; ``options``: keyword arguments of its builder."""

    arch: str = field(default="mlp", metadata=valid(Registered("architectures")))
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class RuleConfig:
    """The learning rule and overrides of its defaults (``None``/empty keeps the default).

    ``exclude``: layer names (as in ``model.named_modules()``) kept on backprop.
    """

    name: str = field(default="bp", metadata=valid(Registered("rules")))
    weights: dict[str, float] = field(default_factory=dict)
    flags: dict[str, bool] = field(default_factory=dict)
    noise_std: float | None = field(default=None, metadata=valid(at_least(0)))
    noise_dist: str | None = field(default=None, metadata=valid(OneOf(NOISE_DISTRIBUTIONS)))
    schedules: dict[str, Any] = field(default_factory=dict)
    align_forward_weight: bool | None = None
    exclude: list[str] = field(default_factory=list, metadata=valid(Text()))


@dataclass
class DataConfig:
    """``dataset``: a registered dataset; ``train_limit``/``test_limit`` keep N seeded random examples.

    ``val_split``: a fraction in (0, 1) or a count >= 1 of the (limited) training set held out
    as the validation set, seeded by ``train.seed`` and stratified by class; the trainer then
    reports ``val_loss``/``val_acc`` beside ``test_*``. Searches choose on it.
    """

    dataset: str = field(default="digits", metadata=valid(Registered("datasets")))
    root: str | None = None
    batch_size: int = field(default=128, metadata=valid(at_least(1)))
    eval_batch_size: int = field(default=1000, metadata=valid(at_least(1)))
    train_limit: int | None = field(default=None, metadata=valid(at_least(1)))
    test_limit: int | None = field(default=None, metadata=valid(at_least(1)))
    val_split: float | None = field(default=None, metadata=valid(above(0)))
    num_workers: int = field(default=0, metadata=valid(at_least(0)))
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class NoiseConfig:
    """Gaussian noise added to each update, std = ``std`` * current lr.

    ``only_backward_weights``: noise only on backward weights (Kolen-Pollack's noisy updates).
    ``absolute``: ``std`` is the noise std at the optimizer's base lr (in weight units), still
    following the schedule: std * lr(step) / (lr * rescale); so optimizers of different
    learning rates receive noise of the same size (the paper's Fig. S1 shifts its curves by
    the squared lr ratio for this).
    """

    std: float = field(default=0.0, metadata=valid(at_least(0)))
    only_backward_weights: bool = False
    absolute: bool = False


@dataclass
class OptimizerConfig:
    """One loss component's optimizer.

    ``name``: sgd, nesterov, adam, adamw or gd (plain gradient descent); ``momentum`` is used by
    sgd and nesterov, rejected by gd and ignored by adam/adamw (their betas stay torch's defaults).
    lr(step) = lr * (batch_size / 256 if rescale_lr) * schedule(epoch), epoch = step / steps_per_epoch.
    """

    name: str = field(default="sgd", metadata=valid(OneOf(tuple(OPTIMIZERS))))
    lr: float = field(default=0.1, metadata=valid(at_least(0)))
    momentum: float = field(default=0.0, metadata=valid(Range(0, 1)))
    weight_decay: float = field(default=0.0, metadata=valid(at_least(0)))
    schedule: Any = None
    rescale_lr: bool = False
    noise: NoiseConfig = field(default_factory=NoiseConfig)


@dataclass
class OptimConfig:
    """``task`` trains W, biases and BatchNorm; ``alignment`` trains the backward weights."""

    task: OptimizerConfig = field(default_factory=OptimizerConfig)
    alignment: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(name="adam", lr=1e-3))


@dataclass
class TrainConfig:
    """The training loop.

    Length: ``steps`` if set, else ``epochs`` * steps_per_epoch (steps_per_epoch = train size // batch).
    Loss: loss_rate * (task + model_l2 * sum_W ||W||^2 / 2) + alignment_rate * sum_l R_l.
    ``delay_epochs``: only the alignment optimizer steps before; the task schedule is shifted by it.
    ``alternating``: even steps update only the backward weights, odd steps only the rest.
    ``accumulate``: micro-batches per step (each of batch_size / accumulate examples).
    ``*_every``: in steps; 0 means only at the end.
    ``check_finite_every``: how often the loss is read on the host to stop on NaN/inf; null: the
    backend's default (every step; the logging interval on XLA, where a host read stalls the trace).
    ``dtype``: the model's and inputs' torch dtype (float64 for exact tests).
    """

    epochs: float | None = field(default=1.0, metadata=valid(above(0)))
    steps: int | None = field(default=None, metadata=valid(at_least(1)))
    loss_rate: float = field(default=1.0, metadata=valid(above(0)))
    alignment_rate: float = field(default=1.0, metadata=valid(at_least(0)))
    model_l2: float = field(default=0.0, metadata=valid(at_least(0)))
    delay_epochs: float = field(default=0.0, metadata=valid(at_least(0)))
    alternating: bool = False
    accumulate: int = field(default=1, metadata=valid(at_least(1)))
    clip_grad_norm: float | None = field(default=None, metadata=valid(above(0)))
    seed: int = field(default=0, metadata=valid(Range(0, MAX_SEED, high_closed=True)))
    deterministic: bool = False
    eval_every: int = field(default=0, metadata=valid(at_least(0)))
    metrics_every: int = field(default=50, metadata=valid(at_least(0)))
    checkpoint_every: int = field(default=0, metadata=valid(at_least(0)))
    check_finite_every: int | None = field(default=None, metadata=valid(at_least(0)))
    topk: list[int] = field(default_factory=lambda: [1, 5], metadata=valid(at_least(1)))
    dtype: str = field(default="float32", metadata=valid(FloatDtype()))
    progress: bool = True


@dataclass
class BackendConfig:
    """``name``: a registered backend (cpu, cuda...); ``options``: its constructor arguments."""

    name: str = field(default="cpu", metadata=valid(Registered("backends")))
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class LogConfig:
    """``loggers``: registered logger names (jsonl is always added); ``options``: per logger name."""

    loggers: list[str] = field(default_factory=lambda: ["jsonl", "console"], metadata=valid(Registered("loggers")))
    options: dict[str, Any] = field(default_factory=dict, metadata=valid(OptionsByName()))


@dataclass
class SearchConfig:
    """``nalign search``: hyperopt's TPE over ``space`` (see ``search.space``), ``max_evals`` trials.

    ``metric``: the trial summary's value to optimise, ``goal``: max or min it. A search never
    reads the test set: ``test_*`` metrics are refused, ``val_*`` ones need ``data.val_split``.
    ``startup_trials``: random trials before TPE models the scores (hyperopt's n_startup_jobs).
    ``trial_resources``: the Ray resources each trial holds on the ``ray`` backend (merged onto
    ``{cpu: 1}``: ``{gpu: 1}`` asks for a CPU and a GPU; ``grids.placement``).
    """

    space: dict[str, Any] = field(default_factory=dict)
    max_evals: int = field(default=0, metadata=valid(at_least(0)))
    metric: str = "val_acc"
    goal: str = field(default="max", metadata=valid(OneOf(("max", "min"))))
    startup_trials: int = field(default=10, metadata=valid(at_least(1)))
    trial_resources: dict[str, Any] = field(default_factory=lambda: {"cpu": 1}, metadata=valid(RayResources()))


@dataclass
class Recipe:
    """A whole recipe. ``by_rule``: per rule name, recipe keys applied when ``rule.name`` is it.

    Precedence, lowest first: ``base`` chain, the file, ``by_rule[rule.name]``, command-line overrides.
    ``resumed``: a run folder's record of each resume that changed a setting,
    ``[{step, changed: {key: {from, to}}}]`` (``training.rundir``); training does not read it.
    """

    name: str = "unnamed"
    base: str | None = None
    description: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    rule: RuleConfig = field(default_factory=RuleConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    log: LogConfig = field(default_factory=LogConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    by_rule: dict[str, Any] = field(default_factory=dict)
    resumed: list[Any] = field(default_factory=list)
