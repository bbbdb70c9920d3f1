"""Checking the options a user passes to a named builder (architecture, dataset, logger).

Builders declare their options as keyword parameters; :func:`checked_options` wraps one so
that an option it does not take is a :class:`UserError` naming the option, the builder
and the options it does take (with a close match suggested), instead of a ``TypeError``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from neural_alignment.core.errors import UserError, did_you_mean

_BY_KEYWORD = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def checked_options(what: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: reject keyword arguments ``fn`` does not declare, naming them for the user.

    ``what`` names the builder in the message, e.g. ``"architecture 'mlp'"``.
    """

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def builder(*args: Any, **options: Any) -> Any:
            check_options(what, fn, options)
            return fn(*args, **options)

        return builder

    return wrap


def check_options(what: str, fn: Callable[..., Any], options: dict[str, Any]) -> None:
    """Raise the :class:`UserError` of :func:`checked_options` if ``fn`` does not take every key of ``options``."""
    params = inspect.signature(fn).parameters
    accepted = {name for name, p in params.items() if p.kind in _BY_KEYWORD}
    listed = [name for name, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    for key in options:
        if key not in accepted:
            hint = did_you_mean(key, listed)
            valid = ", ".join(listed) if listed else "(none)"
            raise UserError(f"unknown option {key!r} for {what}.{hint} Valid options: {valid}")
