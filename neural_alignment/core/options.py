"""Checking the options a user passes to a named builder (architecture, dataset, logger, backend).

Builders declare their options as keyword parameters; :func:`checked_options` wraps one so
that an option it does not take is a :class:`UserError` naming the option, the builder
and the options it does take (with a close match suggested), instead of a ``TypeError``.
:func:`check_option_values` also checks each value against the parameter's annotation
(``int``, ``bool``, ``str | None``...) and against a per-option check (an object whose
``problem(value)`` returns why a value is invalid, as the recipe schema's checks do).
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from collections.abc import Callable, Mapping
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


_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}


def _accepts(kind: type, value: Any) -> bool:
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def annotation_problem(annotation: Any, value: Any) -> str | None:
    """Why ``value`` is not of the simple ``annotation`` (a scalar type or a union of them); ``None``
    when it is or when the annotation is not one of those (nothing to check)."""
    kinds = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    if typing.get_origin(annotation) is typing.Union:
        kinds = typing.get_args(annotation)
    if not all(kind in _TYPE_NAMES for kind in kinds):
        return None
    if any(_accepts(kind, value) for kind in kinds):
        return None
    return f"{value!r} is not {' or '.join(_TYPE_NAMES[kind] for kind in kinds)}"


def check_option_values(what: str, fn: Callable[..., Any], options: dict[str, Any], checks: Mapping[str, Any]) -> None:
    """:func:`check_options`, then each value against ``fn``'s annotation of it and ``checks[key]``:
    a :class:`UserError` naming ``what``, the key, the value and what is valid."""
    check_options(what, fn, options)
    hints = typing.get_type_hints(fn.__init__ if inspect.isclass(fn) else fn)
    for key, value in options.items():
        problem = annotation_problem(hints.get(key), value)
        if problem is None and key in checks and value is not None:
            problem = checks[key].problem(value)
        if problem:
            raise UserError(f"{what} option {key}={value!r}: {problem}")
