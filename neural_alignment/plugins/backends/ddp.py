"""``ddp``: data parallelism with ``torch.distributed`` (gloo on CPU, nccl on GPU).

Under ``torchrun`` (``LOCAL_RANK`` set) every process joins the job. From a plain shell,
``nalign run NAME backend.name=ddp backend.options.nproc_per_node=N`` starts N local processes
itself through ``torch.distributed.run`` (the elastic launcher torchrun is), each running the
same ``nalign run`` with the run folder fixed by the first.

Each process trains on its contiguous 1/world_size of every global batch (the seeded
``StepBatches`` order is the single source, so a checkpoint written by N processes resumes
on M). ``DistributedDataParallel`` averages the gradient of every parameter across processes
inside the backward: W's, and B's, whether it comes from the alignment loss or, for
Kolen-Pollack, is delivered by the op during the task backward (dB = angle_scale * dW). The
kernels' quadratic forms (decay, self) add their gradient after the backward, in closed form
from W and B, which every process holds alike: the same on each, nothing to average. A B whose
gradient is all such terms (sa's: the layer's ``backward_gradient_in_graph`` False; kp's too
when the trainer gives B its angle update from W's averaged gradient after the backward) is left
out of DDP's reduction, which would otherwise wait for a gradient that never comes.
Batch-wise operations see each process's local batch (BatchNorm, the alignment pass's batch
means); ``sync_batchnorm: true`` makes BatchNorm's statistics global (torch's SyncBatchNorm,
which runs on GPUs only), ``sync_alignment_means: true`` the alignment pass's batch means
(BI BWMC, FO BWMC: wm, ia) through a differentiable all-reduce.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from neural_alignment.core.errors import UserError
from neural_alignment.core.layers import aligned_layers
from neural_alignment.plugins.backends.local import cuda_device
from neural_alignment.recipes.schema import OneOf, at_least
from neural_alignment.runtime.backend import STOP_SIGNALS, Backend
from neural_alignment.training.preemption import LAUNCHED_BY_NALIGN, ProcessLost
from neural_alignment.training.rundir import resume_hint

DEVICES = ("cpu", "cuda")
PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "Broken pipe")  # gloo's words


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
    cuda, default cuda when present, one GPU per local rank; ``sync_batchnorm``; ``oversubscribe``:
    allow more CPU processes than cores)."""

    option_checks: ClassVar[dict[str, Any]] = {"nproc_per_node": at_least(1), "device": OneOf(DEVICES)}

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
        oversubscribe: bool = False,
    ):
        if not launched():
            raise UserError(
                "backend 'ddp' runs in processes torchrun starts (or 'nalign run', which starts "
                "them itself); LOCAL_RANK is not set here"
            )
        self.device_type = device or ("cuda" if torch.cuda.is_available() else "cpu")
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
        # the stop votes after every step (training.preemption) stay on the CPU
        self._votes_group = dist.new_group(backend="gloo") if self.device.type == "cuda" else None

    def make_device(self) -> torch.device:
        if self.device_type == "cpu":
            return torch.device("cpu")
        device = cuda_device(self.local_rank)
        torch.cuda.set_device(device)
        return device

    @classmethod
    def launch(cls, options: dict, command: list[str]) -> int | None:
        """Outside a launched job: run ``nalign <command>`` in ``nproc_per_node`` processes through
        torch.distributed.run and return their exit code.

        A process that died makes the launcher stop the others; it reports which one, in one line
        (:class:`DeathReport`). A signal to the launcher reaches every process, which checkpoint and
        exit (``training.preemption``); the launcher then returns 128 + the signal.
        """
        if launched():
            return None
        from torch.distributed import run as elastic
        from torch.distributed.elastic.multiprocessing.api import SignalException
        from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

        nproc = options.get("nproc_per_node", 1)
        cls._check_process_count(nproc, options.get("device"), options.get("oversubscribe", False))
        os.environ.setdefault("OMP_NUM_THREADS", "1")  # what torchrun sets, without its banner
        os.environ[LAUNCHED_BY_NALIGN] = "1"
        try:
            with _quiet_launcher():
                elastic.main(
                    ["--standalone", f"--nproc-per-node={nproc}", "--module", "neural_alignment.cli", *command]
                )
        except SignalException as exc:  # every process got the signal too and has checkpointed
            return 128 + int(exc.sigval)
        except ChildFailedError as exc:
            codes = {rank: failure.exitcode for rank, failure in exc.failures.items()}
            report = DeathReport(codes, nproc, command)
            if report.line:
                print(f"nalign: error: {report.line}", file=sys.stderr, flush=True)
            return report.exit_code
        finally:
            os.environ.pop(LAUNCHED_BY_NALIGN, None)
        return 0

    @staticmethod
    def _check_process_count(nproc: object, device: str | None, oversubscribe: bool) -> None:
        """``nproc_per_node`` must fit the machine: at most one process per CPU core on the CPU
        (each is a whole copy of the run), one per GPU on cuda; ``oversubscribe: true`` allows more CPU ones."""
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda":
            gpus = torch.cuda.device_count()
            if nproc > gpus:  # type: ignore[operator]
                raise UserError(
                    f"backend 'ddp' option nproc_per_node={nproc}: this machine has {gpus} GPUs, one per "
                    f"process; use at most {gpus}"
                )
            return
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        if nproc > cores and not oversubscribe:  # type: ignore[operator]
            raise UserError(
                f"backend 'ddp' option nproc_per_node={nproc} exceeds the {cores} CPU cores here (each "
                f"process holds a whole copy of the run); use at most {cores}, or set "
                "backend.options.oversubscribe=true to start them anyway"
            )

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
        names = {id(p): name for name, p in model.named_parameters()}
        closed_form_only = [
            names[id(layer.backward_weight)]
            for _, layer in aligned_layers(model)
            if layer.backward_weight is not None and not layer.backward_gradient_in_graph
        ]
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, closed_form_only)
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

    def sum_votes(self, votes: torch.Tensor) -> list:
        """Through a gloo group on the CPU: no device round trip after every step on GPUs."""
        total = votes.clone()
        dist.all_reduce(total, group=self._votes_group)
        return total.tolist()

    def lost_process(self, exc: BaseException) -> bool:
        """torch.distributed's errors, and the RuntimeErrors gloo raises when a peer's connection closes."""
        return isinstance(exc, dist.DistError) or (
            isinstance(exc, RuntimeError) and any(sign in str(exc) for sign in PEER_GONE)
        )


@dataclass(frozen=True)
class DeathReport:
    """What the launcher says when processes failed: ``codes`` maps a global rank to its exit code
    (negative: the signal that killed it); ranks that exited with ``ProcessLost.exit_code`` survived
    the one that died, those at 128 + a stop signal stopped on it after their checkpoint."""

    codes: dict[int, int]
    nproc: int
    command: list[str]

    @property
    def died(self) -> dict[int, int]:
        """The ranks that died: not those that stopped cleanly on a stop signal (128 + it), nor those
        that failed after another died (``ProcessLost``) or that the launcher stopped then (- the signal)."""
        clean = {128 + int(s) for s in STOP_SIGNALS}
        stopped = {-int(s) for s in STOP_SIGNALS} | {ProcessLost.exit_code}
        died = {rank: code for rank, code in self.codes.items() if code not in clean | stopped}
        return died or {rank: code for rank, code in self.codes.items() if code in stopped - {ProcessLost.exit_code}}

    @property
    def line(self) -> str:
        """One line naming the ranks that died and how to go on ("" when every process stopped on a signal)."""
        if not self.died:
            return ""
        how = ", ".join(
            f"{rank} ({signal.Signals(-code).name})" if code < 0 else f"{rank} (exit code {code})"
            for rank, code in sorted(self.died.items())
        )
        folder = next(
            (self.command[i + 1] for i, a in enumerate(self.command[:-1]) if a in ("--out", "--resume")), None
        )
        then = resume_hint(folder) if folder else "see its messages above"
        ranks = "rank" if len(self.died) == 1 else "ranks"
        return f"{ranks} {how} of the {self.nproc} processes of this ddp run died; the others stopped; {then}"

    @property
    def exit_code(self) -> int:
        codes = list(self.died.values()) or list(self.codes.values())
        code = codes[0]
        return 128 - code if code < 0 else code or 1


@contextlib.contextmanager
def _quiet_launcher():
    """torch.distributed.run's loggers at ERROR while it runs: its warnings repeat what nalign reports."""
    import logging

    names = [
        n
        for n in logging.root.manager.loggerDict
        if n.startswith(("torch.distributed.elastic", "torch.distributed.run"))
    ]
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
