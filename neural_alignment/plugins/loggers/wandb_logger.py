"""``wandb``: Weights & Biases, offline unless the user configured W&B; never prompts.

Mode, first that applies: the ``mode`` option; ``$WANDB_MODE``; ``"online"`` when
credentials exist (``$WANDB_API_KEY``, or a netrc entry for the W&B host that
``wandb login`` writes); else ``"offline"`` (sync later with ``wandb sync``). An online
mode without credentials is a UserError rather than a login prompt.

The run gets the run name, the resolved recipe as its config, every metric at its step
(per-layer metrics ``<metric>/<layer>`` land in one W&B section per metric, e.g. all
``angle/*`` together), and the summary on close; files go under ``<run_dir>/wandb``.
On close, each per-layer metric also gets one chart with a line per layer,
``<metric>/all_layers`` (a W&B line series over the logged steps).
"""

from __future__ import annotations

import netrc
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from neural_alignment.core.errors import UserError
from neural_alignment.core.options import checked_options
from neural_alignment.runtime.logger import LAYER_SEPARATOR, Logger, is_layer_metric, to_scalar

Mode = Literal["online", "offline", "disabled"]
MODES: tuple[Mode, ...] = ("online", "offline", "disabled")
DEFAULT_HOST = "https://api.wandb.ai"


def netrc_path() -> Path:
    """The netrc file wandb reads: ``$NETRC``, else ``~/.netrc``."""
    return Path(os.environ.get("NETRC") or "~/.netrc").expanduser()


def has_credentials() -> bool:
    """Whether W&B could log in without asking: an API key in the environment or in netrc."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlsplit(os.environ.get("WANDB_BASE_URL") or DEFAULT_HOST).hostname
    try:
        return netrc.netrc(netrc_path()).authenticators(host or "") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def resolve_mode(mode: str | None) -> Mode:
    """The W&B mode to run in (see the module docstring); a UserError for a mode that would prompt."""
    source = "option 'mode' of logger 'wandb'"
    if mode is None and os.environ.get("WANDB_MODE"):
        mode, source = os.environ["WANDB_MODE"], "WANDB_MODE"
    if mode is None:
        return "online" if has_credentials() else "offline"
    if mode not in MODES:
        raise UserError(f"{source} is {mode!r}; valid: {', '.join(MODES)}")
    if mode == "online" and not has_credentials():
        raise UserError(
            f"{source} asks for online W&B logging but no credentials were found:"
            " run `wandb login` or set WANDB_API_KEY (or use mode=offline and `wandb sync` later)"
        )
    return mode


class WandbLogger(Logger):
    """Sends every metric to a W&B run; on close, the per-layer line charts, the summary, finish."""

    def __init__(self, run: Any, plot: Any):
        self.run, self.plot = run, plot
        self.step = 0
        # metric -> layer -> (steps, values), for the per-layer charts drawn on close
        self.layer_series: dict[str, dict[str, tuple[list[int], list[float]]]] = {}

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        values = {name: to_scalar(value) for name, value in metrics.items()}
        self.step = int(step)
        self.run.log(values, step=self.step)
        for name, value in values.items():
            if is_layer_metric(name):
                metric, layer = name.split(LAYER_SEPARATOR, 1)
                steps, ys = self.layer_series.setdefault(metric, {}).setdefault(layer, ([], []))
                steps.append(self.step)
                ys.append(value)

    def layer_charts(self) -> dict[str, Any]:
        """``<metric>/all_layers``: one line series per per-layer metric, a line per layer."""
        return {
            f"{metric}{LAYER_SEPARATOR}all_layers": self.plot.line_series(
                xs=[steps for steps, _ in layers.values()],
                ys=[values for _, values in layers.values()],
                keys=list(layers),
                title=f"{metric} per layer",
                xname="step",
            )
            for metric, layers in self.layer_series.items()
        }

    def close(self, summary: Mapping[str, Any]) -> None:
        if self.layer_series:
            self.run.log(self.layer_charts(), step=self.step)
        self.run.summary.update(dict(summary))
        self.run.finish()


@checked_options("logger 'wandb'")
def wandb(
    run_dir: Path,
    run_name: str,
    config: dict,
    *,
    project: str = "neural-alignment",
    entity: str | None = None,
    mode: str | None = None,
    group: str | None = None,
    tags: Sequence[str] = (),
    notes: str | None = None,
) -> WandbLogger:
    """Weights & Biases: run name, config, every metric (per-layer ones grouped); offline unless W&B is configured."""
    import wandb as wandb_sdk

    resolved = resolve_mode(mode)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    run = wandb_sdk.init(
        project=project,
        entity=entity,
        name=run_name,
        config=config,
        dir=str(run_dir),
        mode=resolved,
        group=group,
        tags=list(tags) or None,
        notes=notes,
    )
    return WandbLogger(run, wandb_sdk.plot)
