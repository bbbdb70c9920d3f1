"""Where a dataset's files are looked for, and the one error raised when they are not there.

Search order: an explicit ``root`` only; otherwise ``$NALIGN_DATA/<name>`` when the
variable is set, then the dataset's system folder (the Debian dataset package's, if any).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from neural_alignment.core.errors import UserError

DATA_ENV = "NALIGN_DATA"


def candidate_roots(name: str, root: str | os.PathLike | None, system_folder: str | None = None) -> list[Path]:
    """The folders to try, in order."""
    if root is not None:
        return [Path(root).expanduser()]
    roots = []
    if os.environ.get(DATA_ENV):
        roots.append(Path(os.environ[DATA_ENV]).expanduser() / name)
    if system_folder is not None:
        roots.append(Path(system_folder))
    return roots


def find_folder(name: str, roots: Sequence[Path], required: Sequence[str], how_to_get: str) -> Path:
    """The first folder of ``roots`` holding every entry of ``required``; else one UserError.

    The error lists every folder tried with what it lacked, and says how to get the data.
    """
    tried = []
    for folder in roots:
        missing = [entry for entry in required if not (folder / entry).exists()]
        if not missing:
            return folder
        state = "does not exist" if not folder.is_dir() else "lacks " + ", ".join(missing)
        tried.append(f"{folder} ({state})")
    looked = "; ".join(tried) if tried else "nowhere (no root given and NALIGN_DATA is not set)"
    raise UserError(
        f"dataset {name!r} not found. Looked in: {looked}. {how_to_get} "
        f"Or put the files in $NALIGN_DATA/{name}/ or pass the dataset option root=<folder>."
    )
