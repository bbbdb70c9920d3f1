"""The run folder: what a run writes where, and how its record is cut back on resume.

A run folder holds ``recipe.yaml``, ``metrics.jsonl`` (the always-on ``jsonl`` logger),
``summary.json`` and ``checkpoint.pt`` (written atomically by ``core.checkpoint``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"  # written by the always-on jsonl logger
SUMMARY = "summary.json"  # written by the always-on jsonl logger when the run ends


def default_run_dir(name: str) -> Path:
    """``runs/<recipe>-<UTC timestamp>``."""
    return Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"


def drop_records_after(path: Path, step: int) -> None:
    """Keep the JSONL records of ``path`` up to ``step`` (and drop a line a kill cut short)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except ValueError:
            continue
    path.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")
