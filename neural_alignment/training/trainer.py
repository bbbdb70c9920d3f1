"""The trainer: one recipe, one run folder.

Each step (global step ``s``, epoch ``e = s / steps_per_epoch``):

1. ``set_epoch(model, e, angle_factor=alignment_rate / loss_rate)`` so Kolen-Pollack's update,
   angle_scale times W.grad (which holds loss_rate * dW), is alignment_rate * dW. The trainer
   delivers it after the backward (``deliver_angle_after_backward``: kp's layers take B detached).
2. For each of ``accumulate`` micro-batches (the step's batch split evenly), one backward of
   ``(loss_rate * (task + model_l2 * sum_W ||W||^2 / 2) + alignment_rate * sum_l R_l) / accumulate``,
   where neither the model L2 nor the kernels' quadratic forms in R_l (decay, self) are in the
   graph: after the backward, ``loss_rate * model_l2 * W`` is added to each W.grad
   (``add_model_l2_gradient``, step 3) and ``add_weight_gradients(model, alignment_rate)`` adds the
   forms' gradient, both in closed form, in place (the same gradients; no kernel-sized
   temporaries in a step). B's own decay in it
   (``alignment_rate * 2 bb B``) is the alignment optimizer's weight decay instead when that
   optimizer adds its decay to the gradient (SGD, Adam) and nothing clips first
   (``optimizer_decay``): the same update, one pass over B fewer. kp's angle update
   ``angle_scale * W.grad`` is added to B.grad (``add_angle_gradients``). Where every B's whole
   gradient is then k K + its decay, K being W (sa) or W.grad (kp), nothing is written:
   ``point_backward_gradients`` sets B.grad = K and B's optimizer the gradient factor k.
3. Which components update: while ``e < delay_epochs`` only the alignment optimizer (backward
   weights), every step; after the delay both, or (``alternating``) the alignment optimizer on
   even steps and the task optimizer (W, biases, BatchNorm) on odd steps. Each component's
   gradients are clipped to ``clip_grad_norm``. The model L2 joins W.grad just before W's step,
   which comes after B's when B.grad is W or W.grad; the update noise is drawn after both
   steps, task first.
   A rule with ``align_forward_weight`` puts W's alignment gradient into the same backward, so
   W's task optimizer applies it (W belongs to the task component only).
4. The loss is checked for NaN/inf every ``check_finite_every`` steps, before the update: a
   non-finite loss stops the run (:class:`TrainingDiverged`) naming the step and the layer with
   the largest or non-finite weight norm; the last checkpoint written stays as it was. Before
   each checkpoint the losses since the last check and the parameters are checked too, so no
   checkpoint is written after the loss or a weight became NaN/inf.

Data order is a seeded permutation per epoch (``seed``, epoch), independent of the global RNG,
so a resumed run sees the same batches.

The backend (``runtime.backend``) carries everything that differs between one device, DDP and XLA:
which part of each global batch this process feeds (``batch_part``), the wrapped module the
forward runs (DDP averages the gradients in its backward; XLA's SPMD step is one program over
the global batch), the end of a step, the device RNG's seed per step, the sums read back at
logging steps (all-reduced), and the checkpoint write (rank 0, CPU tensors). Rank 0 alone
claims and writes the run folder; every process evaluates its share of the test set. Processes
other than rank 0 draw their random numbers (input noise) from their own stream, seeded from
(seed, rank, start step).

The run folder (``training.rundir``: locked by the run,
refused when it holds another run) holds ``recipe.yaml``, ``metrics.jsonl`` (the ``jsonl`` logger
is always on), ``summary.json`` and ``checkpoint.pt`` with the one before it (atomic; every
``checkpoint_every`` steps and at the end). Resuming continues the folder's recipe, drops the
records of ``metrics.jsonl`` past the checkpoint's step (they are logged again), so the record
reads as one uninterrupted run.

"""

from __future__ import annotations

import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader

from neural_alignment.api import add_weight_gradients, alignment_loss, conversion_of, layer_metrics, set_epoch
from neural_alignment.core.alignment import (
    add_angle_gradients,
    backward_decay,
    deliver_angle_after_backward,
    gradient_multiples,
)
from neural_alignment.core.errors import RunFailure, UserError
from neural_alignment.core.primitives import gradient_of, inner
from neural_alignment.recipes.loader import to_dict, to_yaml
from neural_alignment.registry import get_registry
from neural_alignment.runtime import checkpoint
from neural_alignment.runtime.atomic import NoSpace, free_space, no_space, write_text_atomically
from neural_alignment.runtime.data import DataSplits, dataset_length
from neural_alignment.runtime.logger import layer_metric_key
from neural_alignment.runtime.optim import ComponentOptimizer
from neural_alignment.training.batches import StepBatches, process_share
from neural_alignment.training.build import (
    backward_weights,
    build_backend,
    build_data,
    build_model,
    forward_weights,
    make_component,
    schedule_warnings,
    seed_everything,
)
from neural_alignment.training.divergence import TrainingDiverged, blown_up_layer
from neural_alignment.training.evaluation import metric_name, topk_correct
from neural_alignment.training.preemption import LAUNCHED_BY_NALIGN, Interrupted, ProcessLost, StopSignals
from neural_alignment.training.probes import EvaluationProbes
from neural_alignment.training.rundir import CHECKPOINT, ERROR_LOG, RunFolder, resume_changes, resume_hint, with_history


class PluginFailed(RunFailure):
    """A third-party plugin's code raised during training (the message names it; ``error.log`` has the traceback)."""


@dataclass
class RunResult:
    """What :func:`train` returns: the run folder, the final summary and the trained model."""

    run_dir: Path
    summary: dict
    model: nn.Module
    is_main: bool = True  # False in the processes of a data-parallel run other than rank 0


class Trainer:
    """Builds everything a recipe names and trains it; see the module docstring for the step."""

    def __init__(
        self,
        recipe: DictConfig,
        run_dir: str | os.PathLike,
        resume: bool = False,
        on_step: Callable[[Trainer, int], None] | None = None,
        overwrite: bool = False,
        splits: DataSplits | None = None,
        placement: dict | None = None,
    ):
        """Claim ``run_dir`` (``training.rundir``: locked, empty unless ``overwrite``; with ``resume``
        its checkpoint and recipe, of which ``recipe`` may change only the safe keys), build
        everything (``splits``: a dataset already built for this recipe, shared), then write the folder.
        ``placement`` (where this run trains on a Ray cluster, ``grids.placement``) goes into ``summary.json``,
        beside ``started_at`` (the Unix time this call began) and ``seconds`` (its wall time, build included):
        a finished run read back later still says when and how long it held its machine."""
        self.started_at, self.started = time.time(), time.perf_counter()
        self.recipe, self.run_dir, self.on_step, self.placement = recipe, Path(run_dir), on_step, placement
        self.backend = build_backend(recipe)  # first: rank 0 alone claims and writes the folder
        self.folder = RunFolder(run_dir)
        if self.backend.is_main:
            self.folder.claim(resume, overwrite)
        try:
            self._build(splits)
            if resume:
                self._resume()
            if self.backend.rank:  # its own noise stream (rank 0 keeps the run's, which checkpoints hold)
                torch.manual_seed(hash((self.recipe.train.seed, self.backend.rank, self.step)) % 2**63)
            self.net = self.backend.wrap(self.model)  # the module the step's forward runs
            self.loggers, self.probes = [], None
            if self.backend.is_main:
                self.folder.begin(to_yaml(self.recipe), self.step if resume else None, overwrite)
                config = OmegaConf.to_container(self.recipe, resolve=True)
                self.loggers = [
                    make(self.run_dir, self.run_dir.name, config, **options) for make, options in self._logger_factories
                ]
                # rank 0's gradient angles and weight snapshots: every process holds the same weights
                held_out = self.splits.val if self.splits.val is not None else self.splits.test  # a search may read it
                self.probes = EvaluationProbes(
                    self.model,
                    held_out,
                    self.run_dir,
                    self.recipe.train.seed,
                    self.backend.device,
                    self.dtype,
                    self.step,
                )
        except BaseException:
            self.folder.release()
            raise

    def _build(self, splits: DataSplits | None) -> None:
        """Seeds, backend, data, model, optimizers and the loggers' factories: everything that can fail on a setting."""
        recipe, t = self.recipe, self.recipe.train
        seed_everything(t.seed, t.deterministic)
        self.backend.check_batch(recipe.data.batch_size, t.accumulate)
        self.splits = splits if splits is not None else build_data(recipe)
        self.steps_per_epoch = dataset_length(self.splits.train) // recipe.data.batch_size
        if self.steps_per_epoch < 1:
            raise UserError(
                f"data.batch_size={recipe.data.batch_size} exceeds the "
                f"{dataset_length(self.splits.train)} training examples"
            )
        self.total_steps = t.steps if t.steps is not None else max(1, round(t.epochs * self.steps_per_epoch))
        if self.backend.is_main:
            for line in schedule_warnings(recipe, self.steps_per_epoch, self.total_steps):
                print(f"nalign: warning: {line}", file=sys.stderr, flush=True)
        self.dtype = getattr(torch, t.dtype)
        model = build_model(recipe, self.splits)
        conversion = conversion_of(model)
        if conversion is not None and self.backend.is_main:  # what convert did: stdout; modules left: a warning
            for line in conversion.summary().splitlines():
                if line != conversion.left_message():
                    print(f"nalign: {line}", flush=True)
            if conversion.left:
                print(f"nalign: warning: {conversion.left_message()}", file=sys.stderr, flush=True)
        self.model = self.backend.prepare(model, self.dtype)
        deliver_angle_after_backward(self.model)  # kp's B takes its update from W.grad: see train_step
        self.forward_weights = forward_weights(self.model)  # the kernels the model L2 acts on
        self.task, self.alignment = self._components()
        self.ks = sorted({min(k, self.splits.num_classes) for k in t.topk} | {1})
        self.step = 0
        self.saved_step: int | None = None  # the step of the newest checkpoint in the folder
        self._evaluated: tuple[int, dict] = (-1, {})
        self.running = self._zeros(2)  # task loss sum, correct, since the last log
        self.seen = 0  # examples since the last log (a host count: no device read)
        self.nonfinite = self._zeros(())  # > 0 once a loss was NaN/inf
        self.check_every = (
            t.check_finite_every
            if t.check_finite_every is not None
            else self.backend.check_finite_every(t.metrics_every)
        )
        self._logger_factories = self._loggers()

    def _zeros(self, *shape, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Zeros copied from the host: data, not an operation that a lazy device would fold into the
        next step's graph (which would then differ from every other step's)."""
        return torch.zeros(*shape, dtype=dtype).to(self.backend.device)

    def _resume(self) -> None:
        """Continue the folder's run: its recipe (``self.recipe`` may change only the safe keys, recorded
        with the step) and its newest good checkpoint (a notice names a damaged one)."""
        stored = self.folder.stored_recipe()
        changed = resume_changes(stored, self.recipe, self.run_dir)
        state, notice = self.folder.load_checkpoint("cpu")  # written from the CPU by any backend
        if notice:
            print(f"nalign: notice: {notice}", file=sys.stderr, flush=True)
        self._load(state)
        if self.total_steps < self.step:
            raise UserError(
                f"cannot resume {self.run_dir} with {self.total_steps} steps: its checkpoint is at step "
                f"{self.step}; set train.steps (or train.epochs) to at least that"
            )
        self.recipe = with_history(self.recipe, stored, self.step, changed)

    # -- building -------------------------------------------------------------------------
    def _components(self) -> tuple[ComponentOptimizer | None, ComponentOptimizer | None]:
        o, batch = self.recipe.optim, self.recipe.data.batch_size
        backward = backward_weights(self.model)
        taken = {id(p) for p in backward}
        task_params = [p for p in self.model.parameters() if p.requires_grad and id(p) not in taken]
        noisy_task = [] if o.task.noise.only_backward_weights else task_params
        task = make_component(
            o.task, task_params, self.steps_per_epoch, batch, self.recipe.train.delay_epochs, noisy_task
        )
        alignment = make_component(o.alignment, backward, self.steps_per_epoch, batch, 0.0, backward)
        return task, alignment

    def _loggers(self) -> list[tuple[Callable, dict]]:
        """(factory, options) of each logger (``jsonl`` always first); built once the folder is written."""
        log = self.recipe.log
        names = list(dict.fromkeys(["jsonl", *log.loggers]))
        options = to_dict(log.options)
        registry = get_registry()
        return [(registry.get("loggers", name), options.get(name) or {}) for name in names]

    @property
    def components(self) -> dict[str, ComponentOptimizer | None]:
        return {"task": self.task, "alignment": self.alignment}

    # -- checkpoints ----------------------------------------------------------------------
    def save(self) -> Path:
        """Write ``checkpoint.pt`` atomically (rank 0, CPU tensors): model, optimizers, lr state, RNG
        states, the running stats summed over the processes, step. Every process calls it. On a
        full file system a one-line :class:`NoSpace` says which checkpoint is kept."""
        running = torch.tensor(self.backend.sum_across(self.running))
        state = {
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizers": {k: c.state_dict() if c else None for k, c in self.components.items()},
            "schedules": {
                k: {"lr": c.lr(self.step), "epoch": c.lr.epoch(self.step)} if c else None
                for k, c in self.components.items()
            },
            "rng": checkpoint.rng_state(),
            "running": {"sums": running, "seen": self.seen},  # train loss/accuracy since the last log
            "recipe": to_yaml(self.recipe),
        }
        try:
            self.backend.save(state, self.run_dir / CHECKPOINT)
        except NoSpace as exc:  # the checkpoint already there is whole (atomic write)
            kept = f"step {self.saved_step}" if self.saved_step is not None else "none yet"
            raise NoSpace(
                f"{exc}; the last checkpoint ({kept}) is kept; free space, then {resume_hint(self.run_dir)}"
            ) from exc
        self.saved_step = self.step
        return self.run_dir / CHECKPOINT

    def _load(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        for key, component in self.components.items():
            if component is not None:
                component.load_state_dict(state["optimizers"][key])
        checkpoint.set_rng_state(state["rng"])
        self.step = self.saved_step = int(state["step"])
        if "running" in state and self.backend.is_main:  # global sums: counted once, by rank 0
            self.running = state["running"]["sums"].float().to(self.backend.device)
            self.seen = int(state["running"]["seen"])

    # -- the step -------------------------------------------------------------------------
    def updates(self, step: int) -> tuple[bool, bool]:
        """(task updates, alignment updates) at global ``step``: during the delay only the alignment
        trains, every step; after it, with alternation, even steps align and odd steps train the task."""
        t = self.recipe.train
        if step / self.steps_per_epoch < t.delay_epochs:
            return False, True
        if t.alternating:
            return step % 2 == 1, step % 2 == 0
        return True, True

    def losses(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(total loss, task loss incl. model L2, logits) of one micro-batch."""
        t = self.recipe.train
        with self.backend.autocast():
            logits = self.net(x)
            task = F.cross_entropy(logits, y)
            # the model L2 and the kernels' quadratic forms (decay, self) are not in the graph:
            # train_step adds their gradients
            total = t.loss_rate * task + t.alignment_rate * alignment_loss(self.model, weight_terms=False)
        if t.model_l2:  # its value, for the logged task loss: one dot product per kernel
            with torch.no_grad():
                task = task + t.model_l2 * 0.5 * sum(inner(w, w) for w in self.forward_weights)
        return total, task, logits

    def add_model_l2_gradient(self) -> None:
        """W.grad += loss_rate * model_l2 * W for every forward kernel W that trains: the gradient of
        ``loss_rate * model_l2 * sum_W ||W||^2 / 2``, once per step, in place, one fused pass over
        the kernels. Through autograd the term took a forward pow and several backward passes per
        kernel: ResNet-18's bp step with it in the graph measured 1.048 (1.045-1.054) of the step
        with it added here, on the 2-core development machine. A W the backward left without a
        gradient gets the term alone, as autograd would have given it."""
        t = self.recipe.train
        if not t.model_l2:
            return
        kernels: list[torch.Tensor] = [w for w in self.forward_weights if w.requires_grad]
        torch._foreach_add_([gradient_of(w) for w in kernels], kernels, alpha=t.loss_rate * t.model_l2)

    def optimizer_decay(self) -> float | None:
        """B's own decay in the closed-form gradient, ``alignment_rate * 2 bb`` (``backward_decay``),
        when the alignment optimizer can add it as its weight decay, in its own pass over B: it
        couples its weight decay to the gradient (SGD, Adam), clipping does not read the gradient
        first, and every trained B shares the coefficient. Else None: the gradient holds it."""
        t = self.recipe.train
        if self.alignment is None or t.clip_grad_norm or not self.alignment.couples_weight_decay:
            return None
        decay = backward_decay(self.model)
        return None if decay is None else t.alignment_rate * decay

    def point_backward_gradients(self, decay: float | None) -> list[torch.Tensor]:
        """Where each B's gradient is a multiple ``k K`` of a tensor the step holds plus its decay
        (``gradient_multiples``: sa's ``alignment_rate wb W``, kp's ``angle_scale W.grad``), the
        decay is B's optimizer's weight decay (``decay`` not None) and that optimizer takes a
        gradient factor and has nothing else to step on: ``B.grad = K`` for each such B and the
        factor k, so B's gradient costs no pass of its own (ResNet-18: one write of 11 M weights a
        step, 1.5% of sa's step; kp's op then hands nothing to B: autograd's copy of dW is gone);
        returns those B. Else the factor is 1 and the list empty."""
        alignment, found = self.alignment, None
        if alignment is not None and decay is not None and alignment.takes_gradient_factor:
            found = gradient_multiples(self.model, self.recipe.train.alignment_rate)
            if found is not None and any(p.grad is not None for p in alignment.params):
                found = None  # a parameter of B's optimizer with a gradient of its own
        if alignment is not None:
            alignment.set_gradient_factor(1.0 if found is None else found[0])
        if found is None:
            return []
        for B, K in found[1]:
            B.grad = K
        return [B for B, _ in found[1]]

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """One optimizer step at ``self.step`` on this process's part (x, y) of the global batch;
        accumulates the running stats. No host read of a device value, except at check steps."""
        t, step = self.recipe.train, self.step
        self.backend.seed_step(t.seed, step)
        set_epoch(self.model, step / self.steps_per_epoch, angle_factor=t.alignment_rate / t.loss_rate)
        for component in self.components.values():
            if component is not None:
                component.zero_grad()
        for index, (xm, ym) in enumerate(zip(x.chunk(t.accumulate), y.chunk(t.accumulate), strict=True)):
            with self.backend.micro_batch(self.net, last=index == t.accumulate - 1):
                total, task, logits = self.losses(xm, ym)
                (total / t.accumulate).backward()
            self.running += torch.stack([task.detach().float() * len(ym), (logits.argmax(1) == ym).sum().float()])
            self.seen += len(ym) * self.backend.world_size
            self.nonfinite += (~torch.isfinite(total.detach())).float()
        decay = self.optimizer_decay()
        pointed = self.point_backward_gradients(decay)
        if not pointed:
            add_angle_gradients(self.model)
            add_weight_gradients(self.model, t.alignment_rate, decay_in_optimizer=decay is not None)  # once per step
        if self.alignment is not None:
            self.alignment.set_extra_weight_decay(decay or 0.0)
        if self.check_every and (step + 1) % self.check_every == 0:
            self.check_finite(step)
        updates = [
            (c, active) for c, active in zip(self.components.values(), self.updates(step), strict=True) if c is not None
        ]
        # with B.grad pointed at W or W.grad, B's optimizer first (a stable sort: then the task's)
        ordered = sorted(updates, key=lambda update: update[0] is not self.alignment) if pointed else updates
        for component, active in ordered:
            if component is self.task:  # after B's step when B.grad is W.grad (kp): the L2 is W's alone
                self.add_model_l2_gradient()
            if active:  # with B.grad = W or W.grad, B's optimizer first: W's changes both in place
                if t.clip_grad_norm:
                    torch.nn.utils.clip_grad_norm_(component.params, t.clip_grad_norm)
                component.update(step)
            else:
                component.set_step(step)
        for component, active in updates:  # noise in one order, whichever stepped first
            if active:
                component.add_noise(step)
        for B in pointed:
            B.grad = None
        self.backend.end_step()

    def time_steps(
        self, x: torch.Tensor, y: torch.Tensor, repeats: int, clock: Callable[[], float] = time.perf_counter
    ) -> list[float]:
        """Seconds (wall, or ``clock``) of each of ``repeats`` extra training steps on (x, y), device
        synchronised.

        For speed comparisons after a run: it updates the in-memory model, not the run folder.
        """
        x, y = self.backend.to_device((x.to(self.dtype), y))
        seconds = []
        for _ in range(repeats):
            start = clock()
            self.train_step(x, y)
            self.backend.synchronize()
            seconds.append(clock() - start)
        return seconds

    def check_finite(self, step: int, weights: bool = False) -> None:
        """Raise :class:`TrainingDiverged` if a loss since the last check (with ``weights``: or a parameter)
        is NaN/inf."""
        loss_bad = self.backend.sum_across(self.nonfinite) > 0  # every process stops together
        if loss_bad or (weights and not bool(torch.stack([p.isfinite().all() for p in self.model.parameters()]).all())):
            last = self.run_dir / CHECKPOINT
            kept = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was written yet"
            raise TrainingDiverged(
                f"{'loss' if loss_bad else 'weights'} became NaN/inf by step {step} "
                f"(epoch {step / self.steps_per_epoch:.2f}); largest or "
                f"non-finite weight: {blown_up_layer(self.model)}; {kept}. "
                "Lower the learning rates or the rule's weights."
            )

    # -- evaluation and logging -----------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        """Test loss and top-k accuracies over the whole test set, the same over the validation set
        when ``data.val_split`` holds one out (``val_*``), each process evaluating its share;
        gradient angles and a weight snapshot (rank 0, ``training/probes.py``); computed once per step."""
        if self._evaluated[0] == self.step:
            return self._evaluated[1]
        metrics = self.evaluate_split(self.splits.test, "test")
        if self.splits.val is not None:
            metrics.update(self.evaluate_split(self.splits.val, "val"))
        if self.probes is not None:
            metrics.update(self.probes.record(self.model, self.step))
        self.backend.end_step()  # the probes' restored state: not folded into the next step's graph
        self._evaluated = (self.step, metrics)
        return metrics

    @torch.no_grad()
    def evaluate_split(self, dataset, split: str) -> dict[str, float]:
        """``<split>_loss`` and top-k accuracies over the whole of ``dataset``."""
        self.model.eval()
        share = process_share(dataset, self.backend.rank, self.backend.world_size)
        # its own generator: a loader draws its worker seed from the global RNG, which training uses
        loader = DataLoader(
            share,
            batch_size=self.recipe.data.eval_batch_size,
            num_workers=self.recipe.data.num_workers,
            generator=torch.Generator(),
        )
        sums = self._zeros(len(self.ks) + 1, dtype=torch.float64)
        for x, y in loader:
            x, y = self.backend.to_device((x.to(self.dtype), y))
            with self.backend.autocast():
                logits = self.model(x)
            sums[0] += F.cross_entropy(logits.float(), y, reduction="sum")
            sums[1:] += topk_correct(logits, y, self.ks)
            self.backend.end_step()  # one graph per batch shape, not one growing with the split
        self.model.train()
        values = [total / len(dataset) for total in self.backend.sum_across(sums)]
        return {
            f"{split}_loss": values[0],
            **{metric_name(k, split): v for k, v in zip(self.ks, values[1:], strict=True)},
        }

    def layer_summary(self) -> dict[str, float]:
        """Per-layer weight angles and norm ratios, their means, and the last layer's."""
        per_layer = layer_metrics(self.model)
        if not per_layer:
            return {}
        out = {}
        for layer, values in per_layer.items():
            out[layer_metric_key("angle", layer)] = values["weight_angle"]
            out[layer_metric_key("norm_ratio", layer)] = values["norm_ratio"]
        angles = [v["weight_angle"] for v in per_layer.values()]
        ratios = [v["norm_ratio"] for v in per_layer.values()]
        last = per_layer[list(per_layer)[-1]]
        out.update(
            mean_weight_angle=sum(angles) / len(angles),
            last_weight_angle=last["weight_angle"],
            mean_norm_ratio=sum(ratios) / len(ratios),
            last_norm_ratio=last["norm_ratio"],
        )
        return out

    def train_metrics(self) -> dict[str, float]:
        """Mean loss and accuracy since the last call, learning rates, epoch, layer metrics."""
        (loss_sum, correct), count = self.backend.sum_across(self.running), self.seen
        self.running, self.seen = self._zeros(2), 0
        metrics = {"epoch": self.step / self.steps_per_epoch}
        if count:
            metrics.update(loss=loss_sum / count, train_acc=correct / count)
        for key, component in self.components.items():
            if component is not None:
                metrics[f"lr_{key}"] = component.lr(self.step - 1)
        metrics.update(self.layer_summary())
        return metrics

    def initial_metrics(self) -> dict[str, float]:
        """The record of step 0, before any update: epoch 0 and the layer metrics of the initial W and B,
        so every curve starts where the step-0 weight snapshot does. No loss, accuracy or learning rate:
        a record's ``lr_*`` is the one the step just taken used, and no step has been taken."""
        return {"epoch": 0.0, **self.layer_summary()}

    def log(self, metrics: dict[str, float]) -> None:
        for logger in self.loggers:
            logger.log(metrics, self.step)

    def due(self, every: int) -> bool:
        return (bool(every) and self.step % every == 0) or self.step == self.total_steps

    # -- the loop ---------------------------------------------------------------------------
    def batches(self) -> DataLoader:
        seed = self.recipe.train.seed
        sampler = StepBatches(
            dataset_length(self.splits.train),
            self.recipe.data.batch_size,
            seed,
            self.step,
            self.total_steps,
            *self.backend.batch_part,
        )
        # the generator only seeds the workers (their augmentation draws): from the run's seed and start step,
        # not the global RNG (a resumed run must not shift it) nor a fixed seed (every run alike)
        return DataLoader(
            self.splits.train,
            batch_sampler=sampler,
            num_workers=self.recipe.data.num_workers,
            generator=torch.Generator().manual_seed(seed * 1_000_003 + self.step),
        )

    def run(self) -> RunResult:
        from tqdm import tqdm

        t = self.recipe.train
        self.model.train()
        # disable=None: tqdm shows the bar only on a terminal
        bar = tqdm(
            total=self.total_steps,
            initial=self.step,
            desc=self.recipe.name,
            disable=None if t.progress and self.backend.is_main else True,
        )
        start_step, summary = self.step, {}
        step_seconds: list[float] = []
        # from here to the last write, SIGTERM and SIGINT stop the run after its step (training.preemption)
        with StopSignals() as stop:
            try:
                if self.step == 0:  # a resumed run logged its step 0 when it began
                    self.log(self.initial_metrics())
                self._loop(bar, step_seconds, stop)
                if self.step > start_step:
                    self.check_finite(self.step - 1, weights=True)
                if self.saved_step != self.step:  # else the previous checkpoint would become a copy of this one
                    self.save()
                summary = self.summary(step_seconds, "finished")
                return RunResult(self.run_dir, summary, self.model, self.backend.is_main)
            except TrainingDiverged as exc:
                summary = {"status": "diverged", "step": self.step, "error": str(exc)}
                raise
            except Interrupted as exc:  # the checkpoint is written; no evaluation: a preempted machine has seconds left
                summary = {**self.summary(step_seconds, "interrupted", evaluate=False), "signal": exc.signal_name}
                raise
            except BaseException as exc:  # killed (Ctrl-C) or failed: summary.json says so rather than {}
                summary = {"status": "stopped", "step": self.step, "error": f"{type(exc).__name__}: {exc}"}
                if self.backend.world_size > 1 and self.backend.lost_process(exc):
                    raise ProcessLost(self._lost_report()) from exc
                failure = self._plugin_failure(exc)
                if failure is not None:
                    summary["error"] = str(failure)
                    raise failure from exc
                code = None if isinstance(exc, NoSpace) else no_space(exc)
                if code is not None:  # a record's write (metrics.jsonl) on a full file system
                    raise NoSpace(
                        f"cannot write to run folder {self.run_dir}: {os.strerror(code)} "
                        f"({free_space(self.run_dir)}); free space, then {resume_hint(self.run_dir)}"
                    ) from exc
                raise
            finally:
                bar.close()
                summary.update(started_at=self.started_at, seconds=time.perf_counter() - self.started)
                if self.placement is not None:
                    summary["placement"] = self.placement
                self._close_loggers(summary)
                self.folder.release()

    def _close_loggers(self, summary: dict) -> None:
        """Each logger's end (the always-on jsonl logger writes summary.json). A run that failed already
        reports its own error: a full file system that also refuses its summary does not replace it."""
        for logger in self.loggers:
            try:
                logger.close(summary)
            except Exception as exc:
                if summary.get("status") == "finished" or no_space(exc) is None:
                    raise

    def _loop(self, bar, step_seconds: list[float], stop: StopSignals) -> None:
        """The steps up to ``total_steps``; after each, every process agrees whether a signal stops
        the run there (``training.preemption``): then a checkpoint at that step and :class:`Interrupted`."""
        t = self.recipe.train
        clock = time.perf_counter()
        for x, y in self.backend.batches(self.batches()):
            self.train_step(x.to(self.dtype), y)
            self.step += 1
            bar.update(1)
            logging = self.due(t.metrics_every) or self.due(t.eval_every)
            if logging:
                self.backend.synchronize()
            step_seconds.append(time.perf_counter() - clock)
            if logging:
                metrics = self.train_metrics()
                if self.due(t.eval_every):
                    metrics.update(self.evaluate())
                metrics["seconds_per_step"] = float(np.median(step_seconds))
                self.log(metrics)
                bar.set_postfix(
                    {k: round(metrics[k], 3) for k in ("loss", "train_acc", "mean_weight_angle") if k in metrics}
                )
            if t.checkpoint_every and self.step % t.checkpoint_every == 0:
                self.check_finite(self.step - 1, weights=True)
                self.save()
            if self.on_step is not None:
                self.on_step(self, self.step)
            signum = self.backend.agree_stop(stop.received) if self.step < self.total_steps else 0
            if signum:
                self.interrupt(signum)
            clock = time.perf_counter()

    def interrupt(self, signum: int) -> None:
        """Checkpoint the step reached (every process calls it) and raise :class:`Interrupted`."""
        self.check_finite(self.step - 1, weights=True)
        if self.saved_step != self.step:
            self.save()
        stopped = f"{signal.Signals(signum).name} at step {self.step} of {self.total_steps}"
        raise Interrupted(
            signum,
            f"interrupted by {stopped}; checkpoint {self.run_dir / CHECKPOINT} written; {resume_hint(self.run_dir)}"
            if self.backend.is_main
            else "",
        )

    def _plugin_failure(self, exc: BaseException) -> PluginFailed | None:
        """A third-party plugin's error during training as one line naming the plugin, the rule and the
        error, its full traceback kept in the run folder's ``error.log``; None for any other error."""
        if not isinstance(exc, Exception) or isinstance(exc, (UserError, RunFailure)):
            return None
        where = get_registry().plugin_in_traceback(exc)
        if where is None:
            return None
        log = self.run_dir / ERROR_LOG
        if self.backend.is_main:
            write_text_atomically(log, "".join(traceback.format_exception(exc)))
        error = (str(exc).strip().splitlines() or [""])[0]
        return PluginFailed(
            f"{where} raised {type(exc).__name__}: {error} at step {self.step}, training rule "
            f"{self.recipe.rule.name!r}; the full traceback is in {log}; {resume_hint(self.run_dir)}"
        )

    def _lost_report(self) -> str:
        """The one line of a process whose collective failed ("" under nalign's launcher, which names the dead one)."""
        if os.environ.get(LAUNCHED_BY_NALIGN):
            return ""
        b = self.backend
        return (
            f"rank {b.rank} of {b.world_size}: another process of the run died, so it stopped at step {self.step}; "
            f"{resume_hint(self.run_dir)}"
        )

    def summary(self, step_seconds: list[float], status: str, evaluate: bool = True) -> dict:
        """Final record: test metrics (unless not ``evaluate``), layer metrics, median seconds per step
        (robust to load spikes), and the torch version and intra-op thread count the run computed with
        (a re-run with another may differ)."""
        r = self.recipe
        return {
            "status": status,
            "recipe": r.name,
            "rule": r.rule.name,
            "dataset": self.splits.name,
            "steps": self.step,
            "epochs": self.step / self.steps_per_epoch,
            "seconds_per_step": float(np.median(step_seconds)) if step_seconds else None,
            "train_seconds": sum(step_seconds),
            "torch_version": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            **{
                k: v
                for k, v in {**(self.evaluate() if evaluate else {}), **self.layer_summary()}.items()
                if "/" not in k
            },
            **self.backend.summary(),
        }


def train(
    recipe: DictConfig,
    run_dir: str | os.PathLike,
    resume: bool = False,
    on_step: Callable[[Trainer, int], None] | None = None,
    overwrite: bool = False,
    placement: dict | None = None,
) -> RunResult:
    """Train ``recipe`` into ``run_dir`` (continuing its checkpoint when ``resume``; replacing what
    the folder holds when ``overwrite``, else refusing a non-empty folder; ``placement``: see ``Trainer``)."""
    return Trainer(recipe, run_dir, resume, on_step, overwrite, placement=placement).run()
