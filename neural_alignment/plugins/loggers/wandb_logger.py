"""``wandb``: Weights & Biases, offline unless the user configured W&B; never prompts.

Mode, first that applies: the ``mode`` option; ``$WANDB_MODE``; ``"online"`` when
credentials exist (``$WANDB_API_KEY``, or a netrc entry for the W&B host that
``wandb login`` writes); else ``"offline"`` (sync later with ``wandb sync``). An online
mode without credentials is a UserError rather than a login prompt.

The run gets the run name, the resolved recipe as its config, every metric at its step
(per-layer metrics ``<metric>/<layer>`` land in one W&B section per metric, e.g. all
``weight_angle/*`` together), the summary on close; files go under ``<run_dir>/wandb``.
"""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from typing import Any, Mapping, Sequence
from urllib.parse import urlsplit

from neural_alignment.core.errors import UserError
from neural_alignment.core.logger import Logger, to_scalar
from neural_alignment.core.options import checked_options

MODES = ("online", "offline", "disabled")
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
        return netrc.netrc(netrc_path()).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def resolve_mode(mode: str | None) -> str:
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
    """Sends every metric to a W&B run; finishes the run on close."""

    def __init__(self, run: Any):
        self.run = run

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        self.run.log({name: to_scalar(value) for name, value in metrics.items()}, step=int(step))

    def close(self, summary: Mapping[str, Any]) -> None:
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
    return WandbLogger(run)
