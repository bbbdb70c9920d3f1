"""Checks shared by the architecture builders: input shapes and sizes given as options."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from neural_alignment.core.errors import UserError


def image_shape(in_shape: Sequence[int], arch: str) -> tuple[int, int, int]:
    """``in_shape`` as ``(channels, height, width)``, or a UserError naming the architecture."""
    shape = tuple(int(d) for d in in_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise UserError(f"architecture {arch!r} needs images shaped (channels, height, width), got in_shape {shape}")
    return shape


def positive_ints(value: Any, option: str, arch: str) -> tuple[int, ...]:
    """A list option of sizes (e.g. hidden widths) as a tuple of positive ints."""
    if isinstance(value, int):
        value = (value,)
    try:
        sizes = tuple(value)
    except TypeError:
        sizes = None
    if sizes is None or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sizes):
        raise UserError(
            f"option {option!r} of architecture {arch!r} must be a list of positive integers, got {value!r}"
        )
    return sizes
