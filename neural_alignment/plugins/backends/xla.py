"""``xla``: torch-xla's PJRT runtime (TPU in production; ``PJRT_DEVICE=CPU`` in tests).

torch-xla pins its own torch (2.9 for torch-xla 2.9), so it lives in its own environment with
the ``xla`` extra; this module imports it only when the backend is built.

- One process, one XLA device (``torch_xla.device()``) by default. ``processes: N`` (N > 1)
  starts one replica per device through torch-xla's launcher (``torch_xla.launch``): on a TPU
  host one process per chip (all of them), on a pod the same command on every host; on PJRT's
  CPU or CUDA device N sets ``<DEVICE>_NUM_DEVICES``. Each replica trains on its slice of every
  global batch; the gradients are averaged with ``xm.all_reduce`` before clipping and the step.
  Not verified here: PJRT's CPU client runs its N devices as threads of one process, and with
  torch-xla 2.9 their all-reduces wait on each other until XLA aborts (docs/scaling.md).
- Data reaches the device through torch-xla's parallel loader (``MpDeviceLoader``).
- The step is traced lazily and runs at ``torch_xla.sync()``, called at the end of each step.
  The trainer reads device values on the host only at logging, checkpoint and finiteness-check
  steps (``train.check_finite_every`` defaults to ``train.metrics_every`` here), so every rule,
  the alignment pass and the aligned ops trace into a fixed set of graphs: the compilation
  count stops growing after the first steps; ``summary.json`` records it (``xla_compilations``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from neural_alignment.core.errors import UserError
from neural_alignment.runtime.backend import Backend

WORKER = "NALIGN_XLA_WORKER"  # set in the processes torch-xla's launcher starts


def _xla():
    try:
        import torch_xla
    except ImportError as exc:
        raise UserError(
            "backend 'xla' needs torch-xla, which lives in its own environment "
            "(make xla-env, or pip install 'neural-alignment[xla]' next to its torch)"
        ) from exc
    return torch_xla


def _worker(index: int, command: list[str]) -> None:
    """Replica ``index``: run ``nalign <command>``; a non-zero exit code fails the launch."""
    from neural_alignment.cli import main

    code = main(command)
    if code:
        raise SystemExit(code)


class XLABackend(Backend):
    """An XLA device through PJRT (``processes``: one process per device when > 1)."""

    device_type = "xla"
    supports_compile = False  # the lazy tensor trace is the compilation

    def __init__(self, *, processes: int = 1, autocast_dtype: str | None = None, channels_last: bool = False):
        torch_xla = _xla()
        import torch_xla.runtime as xr

        super().__init__(autocast_dtype=autocast_dtype, channels_last=channels_last)
        self.rank, self.world_size = xr.global_ordinal(), xr.world_size()
        self._torch_xla = torch_xla

    def make_device(self) -> torch.device:
        return _xla().device()

    @classmethod
    def launch(cls, options: dict, command: list[str]) -> int | None:
        """``processes`` > 1 outside a launched process: run ``nalign <command>`` in one process per
        device through ``torch_xla.launch`` and return 0 (a failing process raises)."""
        processes = int(options.get("processes", 1))
        if processes < 1:
            raise UserError(f"backend 'xla' option processes={processes} must be >= 1")
        if processes == 1 or os.environ.get(WORKER):
            return None
        torch_xla = _xla()
        os.environ[WORKER] = "1"
        device = os.environ.get("PJRT_DEVICE", "").upper()
        if device in ("CPU", "CUDA"):
            os.environ[f"{device}_NUM_DEVICES"] = str(processes)
        torch_xla.launch(_worker, args=(command,))
        return 0

    def batches(self, loader: Iterable) -> Iterator:
        """Host batches prefetched to the device by torch-xla's parallel loader."""
        from torch_xla.distributed.parallel_loader import MpDeviceLoader

        return iter(MpDeviceLoader(loader, self.device))

    def reduce_gradients(self, params: list[torch.Tensor]) -> None:
        """grad <- mean over the processes (in the traced graph; nothing in one process)."""
        if self.world_size > 1:
            import torch_xla.core.xla_model as xm

            grads = [p.grad for p in params if p.grad is not None]
            if grads:
                xm.all_reduce(xm.REDUCE_SUM, grads, scale=1.0 / self.world_size)  # in place, one graph

    def end_step(self) -> None:
        self._torch_xla.sync()

    def sum_across(self, tensor: torch.Tensor) -> Any:
        if self.world_size > 1:
            import torch_xla.core.xla_model as xm

            tensor = xm.all_reduce(xm.REDUCE_SUM, tensor.detach().clone())
        return tensor.tolist()

    def synchronize(self) -> None:
        import torch_xla.core.xla_model as xm

        xm.wait_device_ops()

    def summary(self) -> dict:
        """``xla_compilations``: the graphs XLA compiled in this process so far."""
        import torch_xla.debug.metrics as met

        data = met.metric_data("CompileTime")
        return {"xla_compilations": int(data[0]) if data else 0}

    def check_finite_every(self, metrics_every: int) -> int:
        """Host reads stall the lazy trace: check at the logging interval."""
        return metrics_every or 1
