"""Execution backends: where tensors live and how the processes of one run share the work.

A backend plugin registers a :class:`Backend` subclass through ``register_backends``; the
trainer builds it as ``cls(**options)``. The trainer reaches devices and other processes only
through the methods below, so its step loop reads the same for one device, DDP and XLA:

=========================  ===========================================================================
``rank``, ``world_size``,  this process among the run's processes (0, 1, True on one device)
``is_main``
``launch(options, cmd)``   classmethod: start the run's processes from a plain shell (``nalign run``)
                           and return their exit code; ``None`` (the default) trains in this process
``prepare(model, dtype)``  the model on the device (memory format, SyncBatchNorm...) before the
                           optimizers are built; the trainer keeps it for state, alignment, metrics
``wrap(model)``            the module whose forward the step calls (DDP wrapper, ``torch.compile``)
``batch_part``             (index, count): this process feeds the index-th of count contiguous
                           parts of each global batch (``rank``, ``world_size``; XLA SPMD: its host's)
``check_batch(b, acc)``    a ``UserError`` unless a global batch of b in acc micro-batches splits evenly
``batches(loader)``        the device batches of a host loader (this process's part of each global
                           batch, which the sampler slices with ``batch_part``)
``micro_batch(net, last)`` the context of one micro-batch's backward (DDP: sync only the last)
``end_step()``             the end of a training step or an evaluation batch (XLA:
                           ``torch_xla.sync()`` cuts the graph)
``sum_across(t)``          host list of ``t`` summed over processes; the trainer calls it only at
                           logging, finiteness-check and checkpoint steps
``save(state, path)``      rank 0 alone writes, CPU tensors, atomically (``runtime.checkpoint``)
``agree_stop(signum)``     after each step, every process: the stop signal any of them received
                           (0: none), so all stop after the same step (``training.preemption``)
``lost_process(exc)``      whether ``exc`` is a collective that failed because a process died
``seed_step(seed, s)``     at the start of global step s: seed a device RNG that the checkpoint's
                           RNG states do not carry (XLA) from (seed, s)
``summary()``              facts for ``summary.json`` (XLA: ``xla_compilations``, ``xla_devices``)
=========================  ===========================================================================

The base class is one torch device in one process. Options every backend takes:
``autocast_dtype`` (e.g. ``bfloat16``: ``torch.autocast`` around the forward and losses),
``channels_last`` (4-d inputs and weights in NHWC memory format) and ``compile`` (``true`` or a
``torch.compile`` backend name such as ``aot_eager``; a backend whose class sets
``supports_compile = False`` rejects it).
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterable, Iterator
from typing import Any, ClassVar

import torch
from torch import nn

from neural_alignment.core.errors import UserError
from neural_alignment.runtime import checkpoint

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
"""The signals on which a run stops after its step with a checkpoint (preemption, Ctrl-C)."""


def to_cpu(value: Any) -> Any:
    """``value`` with every tensor inside dicts, lists and tuples copied to the CPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {key: to_cpu(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_cpu(item) for item in value)
    return value


class Backend:
    """One torch device in one process; see the module docstring for the interface."""

    device_type = "cpu"
    supports_compile = True
    rank = 0
    world_size = 1
    option_checks: ClassVar[dict[str, Any]] = {}
    """Per option, what its values may be beyond the constructor's annotation: an object whose
    ``problem(value)`` says why a value is invalid (the recipe schema's ``Range``, ``OneOf``...)."""

    def __init__(self, *, autocast_dtype: str | None = None, channels_last: bool = False, compile: bool | str = False):
        self.device = self.make_device()
        self.autocast_dtype = self._dtype(autocast_dtype)
        self.channels_last = bool(channels_last)
        if compile and not self.supports_compile:
            raise UserError(
                f"backend option compile={compile!r}: backend {type(self).__name__} does not "
                "support torch.compile; remove the option"
            )
        self.compile = compile

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

    # -- processes ------------------------------------------------------------------------
    @property
    def is_main(self) -> bool:
        """True in the process that writes the run folder (rank 0)."""
        return self.rank == 0

    @property
    def batch_part(self) -> tuple[int, int]:
        """(index, count): this process feeds the index-th of ``count`` contiguous equal parts of
        each global batch (its rank among ``world_size`` processes)."""
        return self.rank, self.world_size

    def check_batch(self, batch_size: int, accumulate: int) -> None:
        """A ``UserError`` unless each process's part of a global batch of ``batch_size`` splits
        into ``accumulate`` equal micro-batches."""
        if batch_size % (accumulate * self.world_size):
            raise UserError(
                f"train.accumulate={accumulate} times {self.world_size} processes must divide "
                f"data.batch_size={batch_size}"
            )

    @classmethod
    def launch(cls, options: dict, command: list[str]) -> int | None:
        """Start the processes of ``nalign <command>`` and return their exit code, or ``None``
        to train in this process (one device; also every process a launcher started)."""
        return None

    # -- the model ------------------------------------------------------------------------
    def prepare(self, model: nn.Module, dtype: torch.dtype) -> nn.Module:
        """``model`` on the device in ``dtype`` (channels_last when asked)."""
        model = model.to(self.device, dtype)
        if not self.channels_last:
            return model
        return model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # stubs lack memory_format

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module the step's forward runs: ``model``, compiled when ``compile`` is set."""
        if not self.compile:
            return model
        compiled = torch.compile(model) if self.compile is True else torch.compile(model, backend=str(self.compile))
        return compiled  # type: ignore[return-value]  # stubs: a compiled Module is a plain callable

    def autocast(self) -> contextlib.AbstractContextManager:
        """The context the forward pass and losses run in."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    # -- the step -------------------------------------------------------------------------
    def to_device(self, batch: Any) -> Any:
        """Move a tensor or a tuple/list of tensors to the device (4-d tensors channels_last when asked)."""
        if isinstance(batch, torch.Tensor):
            batch = batch.to(self.device, non_blocking=True)
            if self.channels_last and batch.dim() == 4:
                batch = batch.contiguous(memory_format=torch.channels_last)
            return batch
        if isinstance(batch, (tuple, list)):
            return type(batch)(self.to_device(item) for item in batch)
        return batch

    def batches(self, loader: Iterable) -> Iterator:
        """The batches of ``loader`` on the device."""
        return (self.to_device(batch) for batch in loader)

    def micro_batch(self, net: nn.Module, last: bool) -> contextlib.AbstractContextManager:
        """The context of one micro-batch's forward and backward (``last``: the step's last)."""
        return contextlib.nullcontext()

    def end_step(self) -> None:
        """Called after each training step and each evaluation batch (lazy devices execute it here)."""

    def sum_across(self, tensor: torch.Tensor) -> Any:
        """``tensor`` summed over the processes, read to the host (``tolist``: a number for a 0-dim tensor, else a
        nested list)."""
        return tensor.tolist()

    def synchronize(self) -> None:
        """Wait for queued device work (for timing)."""

    def agree_stop(self, signum: int) -> int:
        """The stop signal (one of ``STOP_SIGNALS``) any process received, ``signum`` being this
        one's (0: none); the same value in every process. Called by every process after each step."""
        if self.world_size == 1:
            return signum
        votes = torch.tensor([float(signum == stop) for stop in STOP_SIGNALS])
        counts = self.sum_votes(votes)
        return next((int(stop) for stop, count in zip(STOP_SIGNALS, counts, strict=True) if count), 0)

    def lost_process(self, exc: BaseException) -> bool:
        """Whether ``exc`` is a collective failing because another process of the run died."""
        return False

    def sum_votes(self, votes: torch.Tensor) -> list:
        """``votes`` (a small CPU tensor) summed over the processes, for :meth:`agree_stop`."""
        return self.sum_across(votes.to(self.device))

    # -- records ----------------------------------------------------------------------------
    def save(self, state: dict, path: str | os.PathLike) -> None:
        """Write ``state`` to ``path`` atomically from rank 0 alone, with every tensor on the CPU
        (so a checkpoint loads on any backend and any number of processes)."""
        state = to_cpu(state)
        if self.is_main:
            checkpoint.save(state, path)

    def seed_step(self, seed: int, step: int) -> None:
        """Called at the start of global step ``step``: a device whose RNG the checkpoint's states
        (``runtime.checkpoint.rng_state``: torch CPU and CUDA, numpy, random) do not carry seeds it
        from (``seed``, ``step``) here, so a resumed run draws what an uninterrupted one draws. Nothing
        to do on the CPU and CUDA."""

    def summary(self) -> dict:
        """Backend facts recorded in ``summary.json``."""
        return {}

    def check_finite_every(self, metrics_every: int) -> int:
        """The default of ``train.check_finite_every``: every step where a host read is cheap."""
        return 1
