"""One device in one process: ``cpu`` (default) and ``cuda`` (one GPU)."""

from __future__ import annotations

import torch

from neural_alignment.core.errors import UserError
from neural_alignment.runtime.backend import Backend


class CPUBackend(Backend):
    """The CPU (default); options ``autocast_dtype``, ``channels_last``, ``compile``."""

    device_type = "cpu"

    def __init__(self, *, autocast_dtype: str | None = None, channels_last: bool = False, compile: bool | str = False):
        super().__init__(autocast_dtype=autocast_dtype, channels_last=channels_last, compile=compile)


def cuda_device(index: int) -> torch.device:
    """The CUDA device ``index``, or a UserError when torch sees no such GPU."""
    if not torch.cuda.is_available():
        raise UserError("backend 'cuda' needs a CUDA GPU, and torch sees none; use backend.name=cpu")
    if not 0 <= index < torch.cuda.device_count():
        raise UserError(f"backend 'cuda': no GPU with index {index} ({torch.cuda.device_count()} visible)")
    return torch.device("cuda", index)


class CUDABackend(Backend):
    """One CUDA GPU (``index``, default 0); ``autocast_dtype: bfloat16`` for bf16 autocast,
    ``channels_last: true`` for NHWC convolutions, ``compile: true`` for torch.compile."""

    device_type = "cuda"

    def __init__(
        self,
        *,
        index: int = 0,
        autocast_dtype: str | None = None,
        channels_last: bool = False,
        compile: bool | str = False,
    ):
        self.index = index
        super().__init__(autocast_dtype=autocast_dtype, channels_last=channels_last, compile=compile)

    def make_device(self) -> torch.device:
        return cuda_device(self.index)

    def synchronize(self) -> None:
        torch.cuda.synchronize(self.device)
