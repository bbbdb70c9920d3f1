"""``jsonl``: the run's always-on record.

Each ``log(metrics, step)`` appends one line ``{"step": step, <metric>: <value>, ...}`` to
``<run_dir>/metrics.jsonl`` and flushes it (a killed run keeps every logged step; a resumed
run appends). ``close(summary)`` writes ``<run_dir>/summary.json`` atomically (write, then
rename). Non-finite values are written as ``NaN``/``Infinity`` (Python's json reads them).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from neural_alignment.core.options import checked_options
from neural_alignment.runtime.atomic import write_text_atomically
from neural_alignment.runtime.logger import METRICS_FILE, SUMMARY_FILE, Logger, to_scalar


def json_default(value: Any) -> Any:
    """JSON for what ``json`` cannot write itself: tensors and numpy scalars as numbers, paths as text."""
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def write_json_atomically(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically (``runtime.atomic``)."""
    write_text_atomically(path, json.dumps(data, indent=2, default=json_default) + "\n")


class JsonlLogger(Logger):
    """One JSON object per logged step in ``metrics.jsonl``; ``summary.json`` at the end."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._file = open(self.run_dir / METRICS_FILE, "a", encoding="utf-8")  # noqa: SIM115 (held until close)

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        record = {name: to_scalar(value) for name, value in metrics.items()}
        record = {"step": int(step), **{k: v for k, v in record.items() if k != "step"}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self, summary: Mapping[str, Any]) -> None:
        write_json_atomically(self.run_dir / SUMMARY_FILE, dict(summary))
        self._file.close()


@checked_options("logger 'jsonl'")
def jsonl(run_dir: Path, run_name: str, config: dict) -> JsonlLogger:
    """JSON lines in <run_dir>/metrics.jsonl (one per logged step) and summary.json; always on."""
    return JsonlLogger(run_dir)
