"""The run folder: one run's files, held by that run alone.

A run folder holds ``recipe.yaml`` (the resolved recipe; its ``resumed`` list records what
each resume changed and at which step), ``metrics.jsonl`` (the always-on ``jsonl`` logger),
``summary.json`` (written by that logger when the run ends), ``checkpoint.pt`` and the one
before it, ``checkpoint.prev.pt`` (both atomic, ``runtime.checkpoint``).

The rules, so that a user never loses or mixes up a run (:class:`RunFolder`):

- A run holds an OS lock (``fcntl.flock``, ``runtime.folder_lock``) on its folder for as long as it lives; the kernel
  drops it when the process dies, so ``kill -9`` leaves no stale lock. A second run on the same
  folder is a ``UserError``.
- A fresh run refuses a folder that holds anything, unless told to overwrite it.
- A resumed run keeps the folder's recipe; of its keys only ``SAFE_ON_RESUME`` may change
  (:func:`resume_changes`), and ``recipe.yaml`` records each change with the step it took effect.
- Nothing in the folder is written before the run's settings are validated:
  :meth:`RunFolder.begin` is the first write. It removes temporary files a killed checkpoint
  write left, cuts ``metrics.jsonl`` back to the checkpoint's step atomically (write aside,
  then rename) and writes ``recipe.yaml``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from neural_alignment.core.errors import UserError
from neural_alignment.recipes.loader import load_resolved_recipe
from neural_alignment.runtime import checkpoint
from neural_alignment.runtime.atomic import write_text_atomically
from neural_alignment.runtime.folder_lock import FolderLock
from neural_alignment.runtime.logger import METRICS_FILE

CHECKPOINT = "checkpoint.pt"
PREVIOUS_CHECKPOINT = checkpoint.previous_path(CHECKPOINT).name
RECIPE = "recipe.yaml"
ERROR_LOG = "error.log"  # the full traceback of a plugin's error that stopped the run (the CLI prints one line)
HISTORY_KEY = "resumed"  # the recipe key that records what each resume changed

SAFE_ON_RESUME = (
    "train.steps",
    "train.epochs",  # the run's length (never before the checkpoint's step)
    "train.metrics_every",
    "train.eval_every",
    "train.checkpoint_every",
    "train.check_finite_every",
    "train.progress",
    "log.loggers",
    "log.options",
    "backend",  # where the steps run: a checkpoint of N processes or of XLA resumes on M or on the CPU
)
"""Recipe keys a resumed run may change: none of them changes what a step computes."""


def default_run_dir(name: str) -> Path:
    """``runs/<recipe>-<UTC timestamp>``."""
    return Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"


def has_checkpoint(run_dir: str | os.PathLike) -> bool:
    """Whether ``run_dir`` holds a checkpoint to resume from (the latest or the previous one)."""
    return any((Path(run_dir) / name).is_file() for name in (CHECKPOINT, PREVIOUS_CHECKPOINT))


def missing_file(path: Path) -> str:
    """Why the run folder file ``path`` cannot be read: it is not there, or not a file."""
    if path.exists():
        return f"{path} is not a file (a directory?); a run folder holds it as a file: move it away"
    return f"{path} does not exist (was the run folder given?)"


def resume_hint(run_dir: str | os.PathLike) -> str:
    """How to go on with the run in ``run_dir``: resume it when it has a checkpoint, else start it again."""
    if has_checkpoint(run_dir):
        return f"continue with: nalign run --resume {run_dir}"
    return f"it has no checkpoint yet: start it again with --out {run_dir} --overwrite"


def drop_records_after(path: Path, step: int) -> None:
    """Keep the JSONL records of ``path`` up to ``step`` (and drop a line a kill cut short), atomically."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except (ValueError, AttributeError):
            continue
    write_text_atomically(path, "".join(f"{line}\n" for line in kept))


def _flat(container, prefix: str = "") -> dict:
    """``{"a.b.c": leaf}`` for every leaf of nested mappings (a list is a leaf)."""
    items = {}
    for key, value in container.items():
        if isinstance(value, dict) and value:
            items.update(_flat(value, f"{prefix}{key}."))
        else:
            items[f"{prefix}{key}"] = value
    return items


def _safe(key: str) -> bool:
    return any(key == safe or key.startswith(f"{safe}.") for safe in SAFE_ON_RESUME)


def resume_changes(stored: DictConfig, recipe: DictConfig, run_dir: str | os.PathLike) -> dict[str, dict]:
    """The keys ``recipe`` changes from the run folder's ``stored`` recipe, ``{key: {"from": old, "to": new}}``.

    A changed key outside ``SAFE_ON_RESUME`` is a ``UserError`` naming it (the history key is not compared).
    """
    old, new = (_flat(OmegaConf.to_container(c, resolve=True)) for c in (stored, recipe))
    missing = object()
    changed = {
        key: {"from": old.get(key), "to": new.get(key)}
        for key in sorted(old.keys() | new.keys())
        if key.split(".")[0] != HISTORY_KEY and old.get(key, missing) != new.get(key, missing)
    }
    unsafe = [f"{key} ({change['from']!r} -> {change['to']!r})" for key, change in changed.items() if not _safe(key)]
    if unsafe:
        raise UserError(
            f"cannot resume {run_dir} with {', '.join(unsafe)}: a resumed run keeps its recipe except "
            f"{', '.join(SAFE_ON_RESUME)}; start a new run folder to change it"
        )
    return changed


def with_history(recipe: DictConfig, stored: DictConfig, step: int, changed: dict[str, dict]) -> DictConfig:
    """``recipe`` carrying the folder's history of resumes, plus ``changed`` at ``step`` when it is not empty."""
    history = OmegaConf.to_container(stored[HISTORY_KEY])
    assert isinstance(history, list)  # the schema's history is a list
    if changed:
        history.append({"step": step, "changed": changed})
    recipe = recipe.copy()
    recipe[HISTORY_KEY] = history
    return recipe


class RunFolder:
    """A run folder claimed by this run: locked, checked, and written only from :meth:`begin` on."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._created = False
        self._damaged = False  # the latest checkpoint did not load
        self._unlock: Callable[[], None] | None = None

    def claim(self, resume: bool, overwrite: bool = False) -> None:
        """Lock the folder for this run, or raise a ``UserError`` saying why it is not this run's to write.

        A fresh run creates the folder (an empty one is all it may find there, unless ``overwrite``);
        a resumed one needs a checkpoint in it. Nothing else is written.
        """
        if resume:
            latest = self.path / CHECKPOINT
            if not has_checkpoint(self.path) or (latest.exists() and not latest.is_file()):
                raise UserError(f"cannot resume: {missing_file(latest)}")
        else:
            self._create()
        self._lock()
        if not os.access(self.path, os.W_OK):
            self.release()
            raise UserError(f"run folder {self.path} is not writable; choose a folder you can write")
        held = sorted(p.name for p in self.path.iterdir())
        if not resume and held and not overwrite:
            self.release()
            shown = ", ".join(held[:4]) + (", ..." if len(held) > 4 else "")
            raise UserError(
                f"run folder {self.path} is not empty ({shown}); continue that run with "
                f"--resume {self.path}, choose a new folder, or replace it with --overwrite"
            )

    def _create(self) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"run folder {self.path} is an existing file, not a folder; choose a folder")
        try:
            self._created = not self.path.exists()
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create run folder {self.path}: {exc.strerror or exc}") from None

    def _lock(self) -> None:
        """An exclusive lock on the folder itself (``runtime.folder_lock``), held until :meth:`release` or exit."""
        self._unlock = FolderLock(
            self.path,
            f"run folder {self.path} is in use by another run (it holds the folder's lock); "
            "wait for it to end or choose another folder",
        ).release

    def release(self) -> None:
        """Drop the lock; a folder this claim created and nothing was written to is removed again."""
        if self._unlock is not None:
            self._unlock()
        if self._created and self.path.is_dir() and not any(self.path.iterdir()):
            self.path.rmdir()
        self._created = False

    def stored_recipe(self) -> DictConfig:
        """The folder's ``recipe.yaml``, validated (what a resumed run continues)."""
        return load_resolved_recipe(self.path / RECIPE)

    def load_checkpoint(self, map_location) -> tuple[dict, str | None]:
        """The newest good checkpoint and, when that is the previous one, a notice naming the damaged file
        (which :meth:`begin` moves aside to ``checkpoint.pt.damaged``, so no later save keeps it as the previous
        one)."""
        state, notice = checkpoint.load_good(self.path / CHECKPOINT, map_location)
        self._damaged = notice is not None and (self.path / CHECKPOINT).is_file()
        if notice is not None and self._damaged:
            notice += f"; the damaged file is kept as {CHECKPOINT}.damaged"
        return state, notice

    def begin(self, recipe_yaml: str, resume_step: int | None = None, overwrite: bool = False) -> None:
        """The run's first writes, once its settings are valid.

        ``overwrite`` empties the folder first; a resumed run (``resume_step`` given) drops the
        temporary files of a killed checkpoint write and the records after ``resume_step``.
        ``recipe.yaml`` is then written atomically.
        """
        self._created = False  # from here on the folder is the run's record
        if overwrite and resume_step is None:
            for path in self.path.iterdir():
                shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        for tmp in checkpoint.temporary_files(self.path / CHECKPOINT):
            tmp.unlink(missing_ok=True)
        if self._damaged:
            os.replace(self.path / CHECKPOINT, self.path / f"{CHECKPOINT}.damaged")
        if resume_step is not None:
            drop_records_after(self.path / METRICS_FILE, resume_step)
        write_text_atomically(self.path / RECIPE, recipe_yaml)
