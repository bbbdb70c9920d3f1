"""Schedules: functions of the (fractional) epoch that return a multiplier.

One mechanism serves both the rule coefficients (``rule.coefficient(name, epoch) =
weight * schedule(epoch)``) and the optimizers' learning rates. A schedule is built from
plain config (YAML-friendly) with :func:`make_schedule`:

``None`` or ``"constant"``
    always 1.
``{"kind": "constant", "value": v}``
    always ``v`` (default 1).
``{"kind": "window", "start": s, "end": e}``
    ``value`` (default 1) for ``s <= epoch < e``, 0 outside; ``end`` defaults to infinity.
``{"kind": "linear", "start": s, "end": e, "from_value": a, "to_value": b}``
    ``a + (b - a) * (epoch - s) / (e - s)`` for ``s <= epoch <= e``; ``a`` before ``s``,
    ``b`` after ``e`` (clamped).
``{"kind": "exponential", "rate": r, "start": s}``
    ``r ** (epoch - s)`` for ``epoch >= s``, 1 before (``start`` defaults to 0).
``{"kind": "cyclic", "period": p, "low": lo, "high": hi}``
    triangular wave: with ``u = (epoch mod p) / p``,
    ``lo + (hi - lo) * (1 - |2u - 1|)``: ``lo`` at multiples of ``p``, ``hi`` halfway.
``{"kind": "step", "warmup_epochs": w, "warmup_from": a, "drops": [d1, ...], "factor": f}``
    linear warmup ``a + (1 - a) * max(epoch, 0) / w`` for ``epoch < w`` (``a`` defaults to 0,
    no warmup when ``w`` is 0), then 1, times ``f ** (number of d_i <= epoch)``
    (``f`` defaults to 0.1).

A list of configs is the product of its schedules. Unknown kinds or keys raise
:class:`~neural_alignment.core.errors.UserError` naming them and listing the valid ones.

Units: every epoch above is an epoch of data (``steps_per_epoch`` = training examples // batch
size steps), not a fraction of the run; a run whose length is set in steps (``train.steps``)
meets its schedules at ``step / steps_per_epoch``. :func:`last_change` gives the epoch after which
a schedule is constant, what a run checks its length against (``training.build.schedule_warnings``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from neural_alignment.core.errors import UserError

Schedule = Callable[[float], float]
"""A schedule: ``epoch (float) -> multiplier (float)``."""

ScheduleConfig = None | str | Mapping[str, Any] | Sequence[Any]


@dataclass(frozen=True)
class Constant:
    """``value`` at every epoch."""

    value: float = 1.0

    def __call__(self, epoch: float) -> float:
        return float(self.value)


@dataclass(frozen=True)
class Window:
    """``value`` for ``start <= epoch < end``, 0 outside."""

    start: float = 0.0
    end: float = math.inf
    value: float = 1.0

    def __call__(self, epoch: float) -> float:
        return float(self.value) if self.start <= epoch < self.end else 0.0


@dataclass(frozen=True)
class Linear:
    """``from_value + (to_value - from_value) * (epoch - start) / (end - start)``, clamped outside [start, end]."""

    start: float = 0.0
    end: float = 1.0
    from_value: float = 0.0
    to_value: float = 1.0

    def __post_init__(self):
        if not self.end > self.start:
            raise UserError(f"linear schedule needs end > start, got start={self.start}, end={self.end}")

    def __call__(self, epoch: float) -> float:
        t = min(max((epoch - self.start) / (self.end - self.start), 0.0), 1.0)
        return float(self.from_value + (self.to_value - self.from_value) * t)


@dataclass(frozen=True)
class Exponential:
    """``rate ** (epoch - start)`` for ``epoch >= start``, 1 before."""

    rate: float = 1.0
    start: float = 0.0

    def __post_init__(self):
        if not self.rate > 0:
            raise UserError(f"exponential schedule needs rate > 0, got rate={self.rate}")

    def __call__(self, epoch: float) -> float:
        return float(self.rate ** (epoch - self.start)) if epoch >= self.start else 1.0


@dataclass(frozen=True)
class Cyclic:
    """Triangular wave of period ``period``: ``low + (high - low) * (1 - |2u - 1|)``,
    ``u = (epoch mod period) / period``."""

    period: float = 1.0
    low: float = 0.0
    high: float = 1.0

    def __post_init__(self):
        if not self.period > 0:
            raise UserError(f"cyclic schedule needs period > 0, got period={self.period}")

    def __call__(self, epoch: float) -> float:
        u = (epoch % self.period) / self.period
        return float(self.low + (self.high - self.low) * (1.0 - abs(2.0 * u - 1.0)))


@dataclass(frozen=True)
class Step:
    """Linear warmup ``warmup_from + (1 - warmup_from) * max(epoch, 0) / warmup_epochs`` before ``warmup_epochs``,
    then 1; times ``factor ** (number of drops <= epoch)``."""

    warmup_epochs: float = 0.0
    warmup_from: float = 0.0
    drops: tuple = ()
    factor: float = 0.1

    def __post_init__(self):
        object.__setattr__(self, "drops", tuple(float(d) for d in self.drops))

    def __call__(self, epoch: float) -> float:
        if self.warmup_epochs > 0 and epoch < self.warmup_epochs:
            warm = self.warmup_from + (1.0 - self.warmup_from) * max(epoch, 0.0) / self.warmup_epochs
        else:
            warm = 1.0
        return float(warm * self.factor ** sum(1 for d in self.drops if d <= epoch))


@dataclass(frozen=True)
class Product:
    """The product of several schedules."""

    parts: tuple

    def __call__(self, epoch: float) -> float:
        return math.prod(part(epoch) for part in self.parts)


def last_change(schedule: Schedule) -> float | None:
    """The epoch after which ``schedule`` no longer changes: a step schedule's last drop (or its
    warmup's end), a linear one's ``end``, a window's finite ``end``, a product's latest part;
    ``None`` when it never changes (constant) or never settles (exponential, cyclic, a callable)."""
    if isinstance(schedule, Step):
        points = [*schedule.drops, *([schedule.warmup_epochs] if schedule.warmup_epochs > 0 else [])]
        return max(points) if points else None
    if isinstance(schedule, Linear):
        return float(schedule.end)
    if isinstance(schedule, Window):
        return float(schedule.end) if math.isfinite(schedule.end) else None
    if isinstance(schedule, Product):
        ends = [end for end in map(last_change, schedule.parts) if end is not None]
        return max(ends) if ends else None
    return None


KINDS: dict[str, type] = {
    "constant": Constant,
    "window": Window,
    "linear": Linear,
    "exponential": Exponential,
    "cyclic": Cyclic,
    "step": Step,
}


def make_schedule(cfg: ScheduleConfig) -> Schedule:
    """Build a schedule from plain config (see the module docstring for the kinds and formulas).

    ``cfg`` may be ``None``/``"constant"`` (always 1), a kind name (its defaults), a mapping
    with ``kind`` and that kind's keys, a list of those (their product), or already a
    callable (returned as is).
    """
    if cfg is None:
        return Constant()
    if isinstance(cfg, str):
        return make_schedule({"kind": cfg})
    if isinstance(cfg, Mapping):
        return _from_mapping(cfg)
    if isinstance(cfg, Sequence):
        return Product(tuple(make_schedule(part) for part in cfg))
    if callable(cfg):
        return cfg
    raise UserError(f"a schedule must be None, a kind name, a mapping with 'kind', or a list; got {cfg!r}")


def _from_mapping(cfg: Mapping[str, Any]) -> Schedule:
    options = dict(cfg)
    kind = options.pop("kind", "constant")
    if kind not in KINDS:
        raise UserError(f"unknown schedule kind {kind!r}; valid kinds: {', '.join(KINDS)}")
    cls = KINDS[kind]
    valid = [f.name for f in fields(cls)]
    for key, value in options.items():
        if key not in valid:
            raise UserError(f"unknown key {key!r} for schedule kind {kind!r}; valid keys: kind, {', '.join(valid)}")
        _check_number(kind, key, value)
    return cls(**options)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_number(kind: str, key: str, value: Any) -> None:
    """Every schedule key is a number, except ``drops``: a list of numbers (epochs)."""
    if key == "drops":
        if isinstance(value, Sequence) and not isinstance(value, str) and all(map(_is_number, value)):
            return
        raise UserError(f"schedule kind {kind!r}: 'drops' must be a list of epochs, e.g. [30, 60]; got {value!r}")
    if not _is_number(value):
        raise UserError(f"schedule kind {kind!r}: {key!r} must be a number, got {value!r}")
