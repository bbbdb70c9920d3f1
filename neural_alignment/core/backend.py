"""Execution backends: where tensors live and how the step runs (device, autocast).

A backend plugin registers a :class:`Backend` subclass through ``register_backends``; the
trainer builds it as ``cls(**options)``. The base class runs on one torch device.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from neural_alignment.core.errors import UserError


class Backend:
    """One torch device, optional autocast.

    ``autocast_dtype``: ``None`` (full precision) or a dtype name such as ``"bfloat16"`` used
    for ``torch.autocast`` around the forward pass and losses.
    """

    device_type = "cpu"

    def __init__(self, *, autocast_dtype: str | None = None):
        self.device = self.make_device()
        self.autocast_dtype = self._dtype(autocast_dtype)

    def make_device(self) -> torch.device:
        return torch.device(self.device_type)

    @staticmethod
    def _dtype(name: str | None) -> torch.dtype | None:
        if name is None:
            return None
        dtype = getattr(torch, str(name), None)
        if not isinstance(dtype, torch.dtype):
            raise UserError(f"backend option autocast_dtype={name!r} is not a torch dtype (e.g. bfloat16, float16)")
        return dtype

    def autocast(self) -> contextlib.AbstractContextManager:
        """The context the forward pass and losses run in."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def to_device(self, batch: Any) -> Any:
        """Move a tensor or a tuple/list of tensors to the device."""
        if isinstance(batch, torch.Tensor):
            return batch.to(self.device, non_blocking=True)
        if isinstance(batch, (tuple, list)):
            return type(batch)(self.to_device(item) for item in batch)
        return batch

    def synchronize(self) -> None:
        """Wait for queued device work (for timing)."""
