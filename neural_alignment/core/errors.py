"""Errors that are the user's to fix (a bad name, key, file or value).

The ``nalign`` command prints such an error as one line and exits 2, with no traceback.
Every message names the bad thing and what would be valid.
"""


class UserError(Exception):
    """A mistake in user input, with a one-line message that says how to fix it."""
