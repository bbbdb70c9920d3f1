"""Building what a recipe names: seeds, data, model, backend and the per-component optimizers."""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from neural_alignment.api import convert
from neural_alignment.core.layers import aligned_layers
from neural_alignment.core.options import check_option_values
from neural_alignment.core.rules import OPTION_KEYS
from neural_alignment.core.schedules import last_change, make_schedule
from neural_alignment.recipes.loader import recipe_schedules, to_dict
from neural_alignment.registry import get_registry
from neural_alignment.runtime.backend import Backend
from neural_alignment.runtime.data import DataSplits
from neural_alignment.runtime.optim import ComponentOptimizer, make_lr_schedule, make_optimizer


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed torch, numpy and ``random``; in deterministic mode, forbid nondeterministic kernels."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(bool(deterministic))


def build_data(recipe: DictConfig) -> DataSplits:
    """The recipe's dataset (registered name), cut to ``train_limit``/``test_limit``, then
    ``val_split`` of the (cut) training set held out as the validation set (seeded, stratified)."""
    data = recipe.data
    builder = get_registry().get("datasets", data.dataset)
    splits = builder(root=data.root, **to_dict(data.options))
    splits = splits.limited(data.train_limit, data.test_limit, seed=recipe.train.seed)
    return splits.with_validation(data.val_split, seed=recipe.train.seed)


def data_key(recipe: DictConfig) -> str:
    """What :func:`build_data` reads of ``recipe``: recipes with equal keys can share one built dataset."""
    data = recipe.data
    read = [data.dataset, data.root, data.options, data.train_limit, data.test_limit, recipe.train.seed]
    return OmegaConf.to_yaml(OmegaConf.create({"data": read}))


def rule_options(rule: DictConfig) -> dict[str, Any]:
    """The rule overrides a recipe sets (empty mappings and nulls keep the rule's defaults)."""
    options = to_dict(rule)
    return {key: options[key] for key in OPTION_KEYS if options[key] not in (None, {})}


def build_model(recipe: DictConfig, splits: DataSplits) -> nn.Module:
    """The architecture for ``splits``, converted to the recipe's rule (``rule.exclude`` stays on bp);
    what the conversion did is recorded on it (``conversion_of``: the trainer prints it), not warned."""
    builder = get_registry().get("architectures", recipe.model.arch)
    model = builder(splits.num_classes, tuple(splits.in_shape), **to_dict(recipe.model.options))
    return convert(
        model, rule=recipe.rule.name, exclude=tuple(recipe.rule.exclude), warn=False, **rule_options(recipe.rule)
    )


def backend_options(recipe: DictConfig) -> tuple[type[Backend], dict[str, Any]]:
    """The recipe's backend class and its options, each checked (a known key, of the type its
    constructor declares, valid for the class's ``option_checks``) or a one-line ``UserError``."""
    cls = get_registry().get("backends", recipe.backend.name)
    options = to_dict(recipe.backend.options)
    check_option_values(f"backend {recipe.backend.name!r}", cls, options, cls.option_checks)
    return cls, options


def build_backend(recipe: DictConfig) -> Backend:
    cls, options = backend_options(recipe)
    return cls(**options)


def launch_processes(recipe: DictConfig, command: list[str]) -> int | None:
    """Let the recipe's backend start the processes of ``nalign <command>`` (DDP, XLA); their exit
    code, or ``None`` when this process trains (see ``Backend.launch``)."""
    cls, options = backend_options(recipe)
    return cls.launch(options, command)


def backward_weights(model: nn.Module) -> list[nn.Parameter]:
    """Every aligned layer's trainable backward weight B."""
    return [
        m.backward_weight
        for _, m in aligned_layers(model)
        if m.backward_weight is not None and m.backward_weight.requires_grad
    ]


def forward_weights(model: nn.Module) -> list[nn.Parameter]:
    """The forward kernels W: every parameter named ``weight`` with at least 2 dims (not BatchNorm's)."""
    return [p for name, p in model.named_parameters() if name.rpartition(".")[2] == "weight" and p.dim() >= 2]


def schedule_warnings(recipe: DictConfig, steps_per_epoch: int, total_steps: int) -> list[str]:
    """One line per schedule that does not fit a run whose length ``train.steps`` sets.

    Schedules count epochs of data (``core.schedules``), so with ``train.steps`` the run is
    ``total_steps / steps_per_epoch`` epochs, whatever ``train.epochs`` says. Warned: a schedule
    that still changes after the run's end (cut short), and one that settles below its full value
    (a decay, a window that closes) before half of the run. The task schedule is shifted by
    ``train.delay_epochs``. A length set by ``train.epochs`` is in the schedules' own unit: not checked.
    """
    if recipe.train.steps is None:
        return []
    run = total_steps / steps_per_epoch
    where = f"train.steps={total_steps} at {steps_per_epoch} steps per epoch is {run:.3g} epochs"
    lines = []
    for key, cfg in recipe_schedules(recipe).items():
        schedule = make_schedule(cfg)
        end = last_change(schedule)
        if end is None:
            continue
        shift = recipe.train.delay_epochs if key == "optim.task.schedule" else 0.0
        if end + shift > run * (1 + 1e-9):
            lines.append(
                f"{key} changes until epoch {end + shift:.4g}, but {where}: the run ends before the schedule does "
                "(schedules count epochs of data); set train.epochs instead of train.steps, or rescale the schedule"
            )
        elif end + shift < run / 2 and schedule(end) < 1.0:
            lines.append(
                f"{key} settles at {schedule(end):.3g}x after epoch {end + shift:.4g}, but {where}: more than half "
                "of the run trains at the settled rate (schedules count epochs of data); set train.epochs instead "
                "of train.steps, or rescale the schedule"
            )
    return lines


def make_component(
    cfg: DictConfig, params: list, steps_per_epoch: int, batch_size: int, shift: float, noisy: list
) -> ComponentOptimizer | None:
    """One loss component's :class:`ComponentOptimizer`, or ``None`` when it has no parameters."""
    if not params:
        return None
    optimizer = make_optimizer(cfg.name, params, cfg.lr, cfg.momentum, cfg.weight_decay)
    lr = make_lr_schedule(
        cfg.lr,
        to_dict(cfg, resolve=True)["schedule"],
        steps_per_epoch,
        batch_size,
        cfg.rescale_lr,
        shift,
    )
    # absolute noise: std per unit of lr(step) is std / base lr, so the first update's noise is std itself
    noise_std = cfg.noise.std / (lr.base_lr * lr.scale) if cfg.noise.absolute and cfg.noise.std else cfg.noise.std
    return ComponentOptimizer(optimizer, lr, noise_std, noisy)
