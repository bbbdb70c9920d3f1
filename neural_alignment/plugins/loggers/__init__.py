"""Built-in loggers: ``jsonl`` (always on), ``console`` and ``wandb``.

A factory is ``factory(run_dir, run_name, config, **options) -> Logger``
(see :mod:`neural_alignment.runtime.logger`).
"""

from neural_alignment.plugins.loggers.console import console
from neural_alignment.plugins.loggers.jsonl import jsonl
from neural_alignment.plugins.loggers.wandb_logger import wandb
from neural_alignment.registry.markers import hookimpl


@hookimpl
def register_loggers(register):
    for factory in (jsonl, console, wandb):
        register(factory.__name__, factory)
