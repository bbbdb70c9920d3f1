"""``ddp``: data parallelism with ``torch.distributed`` (gloo on CPU, nccl on GPU).

Under ``torchrun`` (``LOCAL_RANK`` set) every process joins the job. From a plain shell,
``nalign run NAME backend.name=ddp backend.options.nproc_per_node=N`` starts N local processes
itself through ``torch.distributed.run`` (the elastic launcher torchrun is), each running the
same ``nalign run`` with the run folder fixed by the first.

Each process trains on its contiguous 1/world_size of every global batch (the seeded
``StepBatches`` order is the single source, so a checkpoint written by N processes resumes
on M). ``DistributedDataParallel`` averages the gradient of every parameter across processes
inside the backward: W's, and B's, whether it comes from the alignment loss or, for
Kolen-Pollack, is delivered by the op during the task backward (dB = angle_scale * dW).
Batch-wise operations see each process's local batch (BatchNorm, the alignment pass's batch
means); ``sync_batchnorm: true`` makes BatchNorm's statistics global (torch's SyncBatchNorm,
which runs on GPUs only), ``sync_alignment_means: true`` the alignment pass's batch means
(BI BWMC, FO BWMC: wm, ia) through a differentiable all-reduce.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from neural_alignment.core.errors import UserError
from neural_alignment.core.layers import aligned_layers
from neural_alignment.plugins.backends.local import cuda_device
from neural_alignment.runtime.backend import Backend

DEVICES = ("cpu", "cuda")


def global_batch_mean(t: torch.Tensor) -> torch.Tensor:
    """The mean over the batch axis of every process's ``t`` (equal batches): sum_r sum_i t / (n * world).

    The all-reduce is differentiable (its backward all-reduces the gradient), so with DDP's
    averaging B's gradient is the one-process gradient on the global batch.
    """
    total = dist_nn.all_reduce(t.sum(dim=0, keepdim=True))
    return total / (t.shape[0] * dist.get_world_size())


def launched() -> bool:
    """True in a process a torch.distributed launcher started (torchrun sets LOCAL_RANK)."""
    return "LOCAL_RANK" in os.environ


class DDPBackend(Backend):
    """Data-parallel processes (``nproc_per_node`` when nalign launches them; ``device`` cpu or
    cuda, default cuda when present, one GPU per local rank; ``sync_batchnorm``)."""

    def __init__(
        self,
        *,
        nproc_per_node: int = 1,
        device: str | None = None,
        sync_batchnorm: bool = False,
        sync_alignment_means: bool = False,
        autocast_dtype: str | None = None,
        channels_last: bool = False,
        compile: bool | str = False,
    ):
        if not launched():
            raise UserError(
                "backend 'ddp' runs in processes torchrun starts (or 'nalign run', which starts "
                "them itself); LOCAL_RANK is not set here"
            )
        self.device_type = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if self.device_type not in DEVICES:
            raise UserError(f"backend 'ddp' option device={device!r}: use one of {', '.join(DEVICES)}")
        self.local_rank = int(os.environ["LOCAL_RANK"])
        super().__init__(autocast_dtype=autocast_dtype, channels_last=channels_last, compile=compile)
        if not dist.is_initialized():  # torchrun's environment names the rendezvous (env://)
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        if sync_batchnorm and self.device.type != "cuda":
            raise UserError(
                "backend 'ddp' option sync_batchnorm needs device cuda (torch's SyncBatchNorm "
                "runs on GPUs only); remove it on CPU"
            )
        self.sync_batchnorm = bool(sync_batchnorm)
        self.sync_alignment_means = bool(sync_alignment_means)
        self._ddp: DistributedDataParallel | None = None

    def make_device(self) -> torch.device:
        if self.device_type == "cpu":
            return torch.device("cpu")
        device = cuda_device(self.local_rank)
        torch.cuda.set_device(device)
        return device

    @classmethod
    def launch(cls, options: dict, command: list[str]) -> int | None:
        """Outside a launched job: run ``nalign <command>`` in ``nproc_per_node`` processes through
        torch.distributed.run and return their exit code (the largest of the failed ones)."""
        if launched():
            return None
        from torch.distributed import run as elastic
        from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

        nproc = int(options.get("nproc_per_node", 1))
        if nproc < 1:
            raise UserError(f"backend 'ddp' option nproc_per_node={nproc} must be >= 1")
        try:
            elastic.main(["--standalone", f"--nproc-per-node={nproc}", "--module", "neural_alignment.cli", *command])
        except ChildFailedError as exc:
            return max(failure.exitcode for failure in exc.failures.values()) or 1
        return 0

    def prepare(self, model: nn.Module, dtype: torch.dtype) -> nn.Module:
        if self.sync_batchnorm:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        if self.sync_alignment_means:
            for _, layer in aligned_layers(model):
                layer.batch_mean = global_batch_mean
        return super().prepare(model, dtype)

    def wrap(self, model: nn.Module) -> nn.Module:
        """DistributedDataParallel around ``model`` (it broadcasts rank 0's parameters and
        buffers), compiled when asked."""
        ids = [self.device] if self.device.type == "cuda" else None
        self._ddp = DistributedDataParallel(model, device_ids=ids)
        return super().wrap(self._ddp)

    def micro_batch(self, net: nn.Module, last: bool) -> contextlib.AbstractContextManager:
        """Gradients are averaged once per step: in the last micro-batch's backward."""
        return contextlib.nullcontext() if last or self._ddp is None else self._ddp.no_sync()

    def sum_across(self, tensor: torch.Tensor) -> Any:
        total = tensor.detach().clone()
        dist.all_reduce(total)
        return total.tolist()

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
