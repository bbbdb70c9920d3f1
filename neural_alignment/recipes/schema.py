"""The recipe schema: OmegaConf structured dataclasses, one per section.

A recipe YAML file is merged onto ``Recipe``; a key the schema does not know or a value of
the wrong type is an error naming the full key path (see ``recipes.loader``).
Learning-rate schedules (``optim.*.schedule``) and rule coefficient schedules
(``rule.schedules``) are configs for ``core.schedules.make_schedule``: a mapping
``{kind: ..., ...}`` or a list of them (a list multiplies).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional


@dataclass
class ModelConfig:
    """``arch``: a registered architecture; ``options``: keyword arguments of its builder."""

    arch: str = "mlp"
    options: Dict[str, Any] = field(default_factory=dict)


@dataclass
class RuleConfig:
    """The learning rule and overrides of its defaults (``None``/empty keeps the default).

    ``exclude``: layer names (as in ``model.named_modules()``) kept on backprop.
    """

    name: str = "bp"
    weights: Dict[str, float] = field(default_factory=dict)
    flags: Dict[str, bool] = field(default_factory=dict)
    noise_std: Optional[float] = None
    noise_dist: Optional[str] = None
    schedules: Dict[str, Any] = field(default_factory=dict)
    align_forward_weight: Optional[bool] = None
    exclude: List[str] = field(default_factory=list)


@dataclass
class DataConfig:
    """``dataset``: a registered dataset; ``train_limit``/``test_limit`` keep N seeded random examples."""

    dataset: str = "digits"
    root: Optional[str] = None
    batch_size: int = 128
    eval_batch_size: int = 1000
    train_limit: Optional[int] = None
    test_limit: Optional[int] = None
    num_workers: int = 0
    options: Dict[str, Any] = field(default_factory=dict)


@dataclass
class NoiseConfig:
    """Gaussian noise added to each update, std = ``std`` * current lr.

    ``only_backward_weights``: noise only on backward weights (Kolen-Pollack's noisy updates).
    """

    std: float = 0.0
    only_backward_weights: bool = False


@dataclass
class OptimizerConfig:
    """One loss component's optimizer.

    ``name``: sgd, nesterov, adam, adamw or gd (plain gradient descent); ``momentum`` is used by
    sgd and nesterov, rejected by gd and ignored by adam/adamw (their betas stay torch's defaults).
    lr(step) = lr * (batch_size / 256 if rescale_lr) * schedule(epoch), epoch = step / steps_per_epoch.
    """

    name: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.0
    weight_decay: float = 0.0
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

    epochs: Optional[float] = 1.0
    steps: Optional[int] = None
    loss_rate: float = 1.0
    alignment_rate: float = 1.0
    model_l2: float = 0.0
    delay_epochs: float = 0.0
    alternating: bool = False
    accumulate: int = 1
    clip_grad_norm: Optional[float] = None
    seed: int = 0
    deterministic: bool = False
    eval_every: int = 0
    metrics_every: int = 50
    checkpoint_every: int = 0
    check_finite_every: Optional[int] = None
    topk: List[int] = field(default_factory=lambda: [1, 5])
    dtype: str = "float32"
    progress: bool = True


@dataclass
class BackendConfig:
    """``name``: a registered backend (cpu, cuda...); ``options``: its constructor arguments."""

    name: str = "cpu"
    options: Dict[str, Any] = field(default_factory=dict)


@dataclass
class LogConfig:
    """``loggers``: registered logger names (jsonl is always added); ``options``: per logger name."""

    loggers: List[str] = field(default_factory=lambda: ["jsonl", "console"])
    options: Dict[str, Any] = field(default_factory=dict)


@dataclass
class SearchConfig:
    """Hyperparameter search (carried for ``nalign search``): space, number of trials, metric."""

    space: Dict[str, Any] = field(default_factory=dict)
    max_evals: int = 0
    metric: str = "test_acc"


@dataclass
class Recipe:
    """A whole recipe. ``by_rule``: per rule name, recipe keys applied when ``rule.name`` is it.

    Precedence, lowest first: ``base`` chain, the file, ``by_rule[rule.name]``, command-line overrides.
    """

    name: str = "unnamed"
    base: Optional[str] = None
    description: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    rule: RuleConfig = field(default_factory=RuleConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    log: LogConfig = field(default_factory=LogConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    by_rule: Dict[str, Any] = field(default_factory=dict)
