"""``xla``: torch-xla's PJRT runtime (TPU in production; ``PJRT_DEVICE=CPU`` in tests).

torch-xla pins its own torch (2.9 for torch-xla 2.9), so it lives in its own environment with
the ``xla`` extra; this module imports it only when the backend is built.

- One process, one XLA device (``torch_xla.device()``) by default.
- ``spmd: true``: every device the runtime has (all the chips of a TPU host; on a pod slice,
  every host's, with the same command on every host), through torch-xla's SPMD mode
  (``torch_xla.runtime.use_spmd()``). One program sees one global batch: each batch is sharded
  along its first dimension over a 1-D mesh of all the devices (axis ``data``), the parameters
  are replicated, and the XLA compiler partitions the step and inserts the gradient all-reduce
  itself (there is no hand-written collective). Every value the trainer sees is global, so
  batch-wise operations (BatchNorm, the alignment pass's batch means) see the global batch, as
  on one device. Each host feeds its contiguous part ``(process_index, process_count)`` of every
  global batch of the seeded ``StepBatches`` order (``batch_part``); torch-xla assembles the
  global batch from the hosts' parts (``ShardingSpec(..., minibatch=True)``). Every host runs
  the whole program, evaluation and probes included, and writes the same run folder. Tested on
  one host's virtual CPU devices; the multi-host path is not run here (no pod).
- Data reaches the device through torch-xla's parallel loader (``MpDeviceLoader``).
- The step is traced lazily and runs at ``torch_xla.sync()``, called at the end of each step
  and of each evaluation batch. The trainer reads device values on the host only at logging,
  checkpoint and finiteness-check steps (``train.check_finite_every`` defaults to
  ``train.metrics_every`` here), each read one graph, so a run compiles a fixed set of graphs
  whatever its length (docs/scaling.md lists them); ``summary.json`` records the count
  (``xla_compilations``) and the devices each batch was sharded over (``xla_devices``).
- The device RNG (input noise, noisy updates) is seeded at every step from (seed, step)
  (``seed_step``), so a resumed run draws what an uninterrupted one draws.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from neural_alignment.core.errors import UserError
from neural_alignment.runtime.backend import Backend

AXIS = "data"  # the mesh's one axis: the batch dimension is sharded over it


def _xla():
    try:
        import torch_xla
    except ImportError as exc:
        raise UserError(
            "backend 'xla' needs torch-xla, which lives in its own environment "
            "(make xla-env, or pip install 'neural-alignment[xla]' next to its torch)"
        ) from exc
    return torch_xla


class XLABackend(Backend):
    """An XLA device through PJRT; with ``spmd``, every device, the batch sharded over them."""

    device_type = "xla"
    supports_compile = False  # the lazy tensor trace is the compilation

    def __init__(self, *, spmd: bool = False, autocast_dtype: str | None = None, channels_last: bool = False):
        torch_xla = _xla()
        import torch_xla.runtime as xr

        self._torch_xla, self.mesh = torch_xla, None
        if spmd:
            xr.use_spmd()  # before the device exists, so no tensor is placed on one device first
        super().__init__(autocast_dtype=autocast_dtype, channels_last=channels_last)
        self.devices, self._batch_part = 1, (0, 1)
        if spmd:
            import numpy as np
            import torch_xla.distributed.spmd as xs

            self.devices = xr.global_runtime_device_count()
            self.mesh = xs.Mesh(np.arange(self.devices), (self.devices,), (AXIS,))
            self._batch_part = (xr.process_index(), xr.process_count())

    def make_device(self) -> torch.device:
        return _xla().device()

    @property
    def batch_part(self) -> tuple[int, int]:
        """Under SPMD, this host's part of each global batch: (process index, process count)."""
        return self._batch_part

    def check_batch(self, batch_size: int, accumulate: int) -> None:
        """Under SPMD each micro-batch is split evenly over the devices."""
        super().check_batch(batch_size, accumulate)
        if batch_size % (accumulate * self.devices):
            raise UserError(
                f"backend 'xla' option spmd=true shards each micro-batch over {self.devices} devices: "
                f"train.accumulate={accumulate} times {self.devices} must divide data.batch_size={batch_size}"
            )

    def _sharding(self, dims: int) -> Any:
        """The spec of a host batch of ``dims`` dimensions: this host's part of dim 0 over the mesh."""
        import torch_xla.distributed.spmd as xs

        return xs.ShardingSpec(self.mesh, (AXIS,) + (None,) * (dims - 1), minibatch=True)

    def batches(self, loader: Iterable) -> Iterator:
        """Host batches prefetched to the device by torch-xla's parallel loader; under SPMD each
        (x, y) of this host's part of the global batch, assembled into the global batch sharded on dim 0."""
        from torch_xla.distributed.parallel_loader import MpDeviceLoader

        if self.mesh is None:
            return iter(MpDeviceLoader(loader, self.device))
        host = iter(loader)
        first = next(host, None)
        if first is None:
            return iter(())
        named = ({"x": x, "y": y} for x, y in itertools.chain([first], host))
        sharding = {key: self._sharding(t.dim()) for key, t in zip("xy", first, strict=True)}
        return ((b["x"], b["y"]) for b in MpDeviceLoader(named, self.device, input_sharding=sharding))

    def to_device(self, batch: Any) -> Any:
        """On the device; under SPMD a tensor whose first dimension the devices divide is sharded
        over them (every host holds the whole tensor: evaluation batches, a benchmark's batch)."""
        batch = super().to_device(batch)
        if (
            self.mesh is not None
            and isinstance(batch, torch.Tensor)
            and batch.dim()
            and batch.shape[0] % self.devices == 0
        ):
            import torch_xla.distributed.spmd as xs

            xs.mark_sharding(batch, self.mesh, (AXIS,) + (None,) * (batch.dim() - 1))
        return batch

    def end_step(self) -> None:
        self._torch_xla.sync()

    def synchronize(self) -> None:
        import torch_xla.core.xla_model as xm

        xm.wait_device_ops()

    def seed_step(self, seed: int, step: int) -> None:
        """XLA's RNG (input noise, noisy updates) at step ``step``: seeded with ``hash((seed, step))``.

        torch-xla advances its seed at every ``torch_xla.sync()`` whether or not anything was drawn,
        so a stream carried over from the previous step would depend on how many evaluation batches
        and loader syncs came between (and ``torch.manual_seed`` does not reach it); a seed per step
        does not. The seed is a graph input, not a constant: no graph is recompiled for it."""
        import torch_xla.core.xla_model as xm

        xm.set_rng_state(hash((seed, step)) % 2**63, self.device)  # an int tuple's hash is not salted

    def summary(self) -> dict:
        """``xla_compilations``: the graphs XLA compiled in this process so far; ``xla_devices``:
        the devices each batch was sharded over (1 without SPMD)."""
        import torch_xla.debug.metrics as met

        data = met.metric_data("CompileTime")
        return {"xla_compilations": int(data[0]) if data else 0, "xla_devices": self.devices}

    def check_finite_every(self, metrics_every: int) -> int:
        """Host reads stall the lazy trace: check at the logging interval."""
        return metrics_every or 1
