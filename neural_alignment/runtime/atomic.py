"""Replace a file atomically: write beside it, then rename over it.

``os.replace`` is atomic on POSIX, so a process killed mid-write leaves the old file or the
new one, never half of one. The temporary file sits in the target's folder (a rename does not
cross file systems) under a hidden name ``.<name>.<random>.tmp``.

A write that fails because the file system is full (or the quota spent) raises :class:`NoSpace`:
one line naming the file, the cause and the free space, the file left as it was, instead of
the chain of errors the writer raised (torch's zip writer adds its own ``enforce fail``).
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from neural_alignment.core.errors import RunFailure

FULL = (errno.ENOSPC, errno.EDQUOT)  # no space left on the device, disk quota exceeded


class NoSpace(RunFailure):
    """A write that failed for want of space; the message names the file and the free space."""


def no_space(exc: BaseException) -> int | None:
    """The errno (ENOSPC, EDQUOT) of a full file system anywhere in ``exc``'s chain, else None."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in FULL:
            return current.errno
        if "No space left on device" in str(current):
            return errno.ENOSPC
        current = current.__cause__ or current.__context__
    return None


def free_space(path: str | os.PathLike) -> str:
    """The space left to this user on ``path``'s file system, e.g. ``"12.0 KiB free"``."""
    try:
        stat = os.statvfs(path)
    except OSError:
        return "free space unknown"
    free = stat.f_bavail * stat.f_frsize
    power = min(3, max(0, (free.bit_length() - 1) // 10))  # B, KiB, MiB, GiB
    return f"{free / 1024**power:.{1 if power else 0}f} {('B', 'KiB', 'MiB', 'GiB')[power]} free"


def no_space_error(path: str | os.PathLike, code: int) -> NoSpace:
    """:class:`NoSpace` for a failed write of ``path``: ``cannot write PATH: <strerror> (N free on FOLDER)``."""
    folder = Path(path).parent
    return NoSpace(f"cannot write {path}: {os.strerror(code)} ({free_space(folder)} on {folder})")


@contextmanager
def replaced_atomically(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary path beside ``path``; when the block ends it is renamed over ``path``.

    If the block raises, the temporary file is removed and ``path`` is left as it was; a full file
    system is raised as :class:`NoSpace`.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        code = None if isinstance(exc, NoSpace) else no_space(exc)
        if code is not None:
            raise no_space_error(path, code) from exc
        raise


def write_text_atomically(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through :func:`replaced_atomically`."""
    with replaced_atomically(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
