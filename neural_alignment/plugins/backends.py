"""Built-in backends: ``cpu`` and ``cuda`` (one GPU, optional bf16 autocast)."""

from __future__ import annotations

import torch

from neural_alignment.core.backend import Backend
from neural_alignment.core.errors import UserError
from neural_alignment.registry.markers import hookimpl


class CPUBackend(Backend):
    """The CPU (default)."""

    device_type = "cpu"


class CUDABackend(Backend):
    """One CUDA GPU (``index``, default 0); ``autocast_dtype: bfloat16`` for bf16 autocast."""

    device_type = "cuda"

    def __init__(self, *, index: int = 0, autocast_dtype: str | None = None):
        self.index = index
        super().__init__(autocast_dtype=autocast_dtype)

    def make_device(self) -> torch.device:
        if not torch.cuda.is_available():
            raise UserError("backend 'cuda' needs a CUDA GPU, and torch sees none; use backend.name=cpu")
        if not 0 <= self.index < torch.cuda.device_count():
            raise UserError(f"backend 'cuda': no GPU with index {self.index} ({torch.cuda.device_count()} visible)")
        return torch.device("cuda", self.index)

    def synchronize(self) -> None:
        torch.cuda.synchronize(self.device)


@hookimpl
def register_backends(register):
    register("cpu", CPUBackend)
    register("cuda", CUDABackend)
