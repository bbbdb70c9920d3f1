"""Atomic checkpoints that load with ``torch.load(weights_only=True)``, and the one before.

:func:`save` writes to a temporary file in the target's folder and renames it over the
target (``os.replace`` is atomic on POSIX), so a run killed mid-write keeps its previous
checkpoint; the checkpoint it replaces stays beside it as :func:`previous_path`
(``checkpoint.pt`` -> ``checkpoint.prev.pt``). :func:`load_good` reads the newest checkpoint
that loads and says which file was damaged. Random-number-generator states are stored as tensors and plain Python types:
:func:`rng_state` / :func:`set_rng_state` cover torch (CPU and CUDA), numpy and ``random``.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neural_alignment.core.errors import UserError
from neural_alignment.runtime.atomic import replaced_atomically


def previous_path(path: str | os.PathLike) -> Path:
    """Where :func:`save` keeps the checkpoint it replaced: ``checkpoint.pt`` -> ``checkpoint.prev.pt``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def temporary_files(path: str | os.PathLike) -> list[Path]:
    """The temporary files a :func:`save` of ``path`` killed mid-write left behind."""
    path = Path(path)
    return sorted(path.parent.glob(f".{path.name}.*.tmp")) + sorted(
        path.parent.glob(f".{previous_path(path).name}.*.tmp")
    )


def save(state: dict[str, Any], path: str | os.PathLike, keep_previous: bool = True) -> Path:
    """Write ``state`` to ``path`` atomically (temporary file in the same folder, then rename).

    With ``keep_previous`` the checkpoint being replaced becomes :func:`previous_path` once the
    new one is written (hard link then rename, so ``path`` itself is never missing).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replaced_atomically(path) as tmp:
        with open(tmp, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        if keep_previous and path.is_file():
            _replace_by_link(path, previous_path(path))
    return path


def _replace_by_link(source: Path, target: Path) -> None:
    """Make ``target`` a copy of ``source`` atomically (a hard link where the file system has them)."""
    with replaced_atomically(target) as tmp:
        tmp.unlink()
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)


def load(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save` (``weights_only=True``: tensors and plain types only)."""
    return torch.load(path, map_location=map_location, weights_only=True)


def _try_load(path: Path, map_location: Any) -> tuple[dict[str, Any] | None, str]:
    """(the state, "") when ``path`` loads as a checkpoint with a step, else (None, why not)."""
    if not path.is_file():
        return None, "not a file" if path.exists() else "missing"
    try:
        state = load(path, map_location)
    except Exception as exc:  # truncated, empty or random bytes fail in many ways inside torch
        reason = str(exc).strip().splitlines()
        return None, f"{type(exc).__name__}: {reason[0][:120]}" if reason else type(exc).__name__
    if not isinstance(state, dict) or "step" not in state:
        return None, "not a checkpoint (no step)"
    return state, ""


def load_good(path: str | os.PathLike, map_location: Any = "cpu") -> tuple[dict[str, Any], str | None]:
    """The newest good checkpoint of ``path`` and a notice when it is the previous one.

    Returns ``(state, None)`` when ``path`` loads, ``(previous state, notice naming the damaged
    file)`` when only :func:`previous_path` does; raises ``UserError`` naming both otherwise.
    """
    path = Path(path)
    state, why = _try_load(path, map_location)
    if state is not None:
        return state, None
    previous = previous_path(path)
    state, why_previous = _try_load(previous, map_location)
    if state is not None:
        return state, f"checkpoint {path} is damaged ({why}); using the previous one, {previous} (step {state['step']})"
    if why == "missing" and why_previous == "missing":
        raise UserError(f"cannot resume: {path} does not exist (was the run folder given?)")
    raise UserError(
        f"checkpoint {path} is damaged ({why}) and there is no good previous one "
        f"({previous}: {why_previous}); start the run again in a new folder or with --overwrite"
    )


def rng_state() -> dict[str, Any]:
    """The torch, CUDA, numpy and Python RNG states as tensors and plain types."""
    state = np.random.get_state(legacy=True)
    assert isinstance(state, tuple)  # the legacy global generator is an MT19937: its state is a tuple
    kind, keys, pos, has_gauss, cached = state
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the states :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
