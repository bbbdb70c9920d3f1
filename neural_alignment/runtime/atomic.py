"""Replace a file atomically: write beside it, then rename over it.

``os.replace`` is atomic on POSIX, so a process killed mid-write leaves the old file or the
new one, never half of one. The temporary file sits in the target's folder (a rename does not
cross file systems) under a hidden name ``.<name>.<random>.tmp``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def replaced_atomically(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary path beside ``path``; when the block ends it is renamed over ``path``.

    If the block raises, the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomically(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through :func:`replaced_atomically`."""
    with replaced_atomically(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
