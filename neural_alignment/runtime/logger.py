"""The logger contract: where a run's metrics go.

A logger plugin registers a *factory* through ``register_loggers``::

    factory(run_dir: pathlib.Path, run_name: str, config: dict, **options) -> Logger

``run_dir`` is the run folder (it exists), ``run_name`` the run's display name and
``config`` the resolved recipe as plain Python containers. The trainer then calls
``log(metrics, step)`` any number of times with increasing ``step`` and ``close(summary)``
exactly once.

Metric names: a per-layer metric is named ``<metric>/<layer>`` (see :func:`layer_metric_key`),
e.g. ``angle/features.0`` for the weight angle of layer ``features.0``; run-level metrics
have no ``/`` (``loss``, ``test_acc``, ``mean_weight_angle``). Loggers that group charts
(W&B) group them by the part before the ``/``.

The always-on ``jsonl`` logger writes ``METRICS_FILE`` and ``SUMMARY_FILE`` in the run folder;
the trainer, the executor and the analyses read them by these names.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from typing import Any

LAYER_SEPARATOR = "/"
METRICS_FILE = "metrics.jsonl"
"""The always-on ``jsonl`` logger's record in the run folder: one JSON object per logged step."""
SUMMARY_FILE = "summary.json"
"""Written by the ``jsonl`` logger's ``close(summary)`` when the run ends."""


def layer_metric_key(metric: str, layer: str) -> str:
    """The logged name of a per-layer metric: ``f"{metric}/{layer}"``."""
    return f"{metric}{LAYER_SEPARATOR}{layer}"


def is_layer_metric(key: str) -> bool:
    """Whether ``key`` names a per-layer metric (``<metric>/<layer>``)."""
    return LAYER_SEPARATOR in key


def to_scalar(value: Any) -> float | int:
    """A metric value as a Python number (accepts Python numbers, 0-dim tensors and numpy scalars)."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"metric value {value!r} is not a number")
    return value


class Logger(abc.ABC):
    """Receives a run's metrics. Subclasses implement :meth:`log` and, if they hold resources, :meth:`close`."""

    @abc.abstractmethod
    def log(self, metrics: Mapping[str, float], step: int) -> None:
        """Record ``metrics`` (name -> number) at global step ``step``."""

    def close(self, summary: Mapping[str, Any]) -> None:  # noqa: B027 (optional, default no-op)
        """Record the run's final ``summary`` and release resources. Called once, at the end."""


LoggerFactory = Callable[..., Logger]
"""``factory(run_dir: pathlib.Path, run_name: str, config: dict, **options) -> Logger``."""

__all__ = ["LAYER_SEPARATOR", "Logger", "LoggerFactory", "is_layer_metric", "layer_metric_key", "to_scalar"]
