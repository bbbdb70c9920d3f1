"""``console``: one compact line per ``log`` call, written through ``tqdm.write`` so that a
progress bar on the same stream is redrawn below it rather than broken.

Line: ``[<run name>] step <step>  loss 0.4321  test_acc 0.8812 ...``. By default only
run-level metrics are shown (per-layer ones, ``<metric>/<layer>``, would not fit a line);
``keys`` picks metrics explicitly.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from neural_alignment.core.errors import UserError
from neural_alignment.core.options import checked_options
from neural_alignment.runtime.logger import Logger, is_layer_metric

STREAMS = ("stderr", "stdout")


def format_value(value: Any, precision: int) -> str:
    """Floats with ``precision`` significant digits; anything else as ``str``."""
    if hasattr(value, "item"):
        value = value.item()
    return f"{value:.{precision}g}" if isinstance(value, float) else str(value)


class ConsoleLogger(Logger):
    """Prints ``[run] step N  name value ...`` lines for the chosen metrics."""

    def __init__(self, run_name: str, keys: Sequence[str] | None, precision: int, stream: str):
        self.run_name, self.precision, self.stream = run_name, precision, stream
        self.keys = None if keys is None else list(keys)

    def shown(self, metrics: Mapping[str, Any]) -> dict[str, Any]:
        if self.keys is None:
            return {k: v for k, v in metrics.items() if not is_layer_metric(k)}
        return {k: metrics[k] for k in self.keys if k in metrics}

    def write(self, head: str, values: Mapping[str, Any]) -> None:
        parts = [f"[{self.run_name}] {head}"] + [f"{k} {format_value(v, self.precision)}" for k, v in values.items()]
        tqdm.write("  ".join(parts), file=getattr(sys, self.stream))

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        self.write(f"step {step}", self.shown(metrics))

    def close(self, summary: Mapping[str, Any]) -> None:
        numbers = {k: v for k, v in summary.items() if isinstance(v, (int, float)) or hasattr(v, "item")}
        self.write("done", self.shown(numbers))


@checked_options("logger 'console'")
def console(
    run_dir: Path,
    run_name: str,
    config: dict,
    *,
    keys: Sequence[str] | None = None,
    precision: int = 4,
    stream: str = "stderr",
) -> ConsoleLogger:
    """One compact line per logged step on stderr (via tqdm.write, so a progress bar survives)."""
    if stream not in STREAMS:
        raise UserError(f"option 'stream' of logger 'console' must be one of {', '.join(STREAMS)}, got {stream!r}")
    return ConsoleLogger(run_name, keys, int(precision), stream)
