"""Errors reported in one line: the user's to fix (a bad name, key, file or value), and runs
that failed for a cause outside the recipe.

The ``nalign`` command prints such an error as one line, with no traceback: a ``UserError``
exits 2, a ``RunFailure`` its ``exit_code`` (1). Every message names the bad thing and what
would be valid, or the cause and what the user keeps. A command that ran but some of
whose work failed (a grid with failed cells, a search in which no trial scored) exits
``EXIT_FAILED`` (1).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

EXIT_FAILED = 1
"""The exit status of a command that ran to its end but some of whose work failed (it says which)."""


class UserError(Exception):
    """A mistake in user input, with a one-line message that says how to fix it."""


class RunFailure(Exception):
    """A run that failed for a reason outside its recipe (a full disk, a process of the run that
    died, a plugin's error), with a one-line message naming the cause and what the user keeps.

    ``nalign`` prints the message (none when it is empty: another process reports it) and exits
    ``exit_code``.
    """

    exit_code = 1


def did_you_mean(name: object, known: Iterable[str], cutoff: float = 0.6) -> str:
    """`` Did you mean 'x'?`` for the known name closest to ``name``, or ``""`` when none is close."""
    close = difflib.get_close_matches(str(name), list(known), n=1, cutoff=cutoff)
    return f" Did you mean {close[0]!r}?" if close else ""
