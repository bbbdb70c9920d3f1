"""An OS lock on a folder, held by one process for as long as it lives.

:class:`FolderLock` takes an exclusive, non-blocking ``fcntl.flock`` on the folder's own
descriptor. The kernel drops it when the descriptor is closed (:meth:`FolderLock.release`, or the
object collected) or the process dies, so ``kill -9`` leaves no stale lock behind. What holds one:
a run on its run folder (``training.rundir``), a search on its search folder (``search.run``), a
comparison grid on its output folder (``grids.compare``); a second user of the folder gets a
``UserError`` with the message the holder's kind gives.
"""

from __future__ import annotations

import fcntl
import os
import weakref
from pathlib import Path

from neural_alignment.core.errors import UserError


class FolderLock:
    """The lock on the existing folder ``path``; ``in_use`` is the ``UserError`` text when another process holds it."""

    def __init__(self, path: str | os.PathLike, in_use: str):
        self.path = Path(path)
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            raise UserError(f"cannot open folder {self.path}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise UserError(in_use) from None
        self._close = weakref.finalize(self, os.close, fd)  # closing the descriptor drops the lock

    def release(self) -> None:
        """Drop the lock (a second call does nothing)."""
        self._close()

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def create_folder(path: Path, what: str, give: str) -> None:
    """Make ``path`` a folder if it is none yet (``what``: "search folder", ...; ``give``: what to give
    instead when ``path`` is a file); every failure is a one-line ``UserError``."""
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} {path} is a file; give {give}")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {what} {path}: {exc.strerror or exc}") from None
