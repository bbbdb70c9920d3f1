"""What the trainer records at each evaluation step besides accuracy (appendix C).

- **Gradient angles**: per aligned layer, the angle between the gradient its input receives
  under the rule and the true backprop gradient (``core.metrics.gradient_angle``: same
  weights, B := W), with the cross-entropy loss on a fixed held-out batch: ``GRADIENT_BATCH``
  examples of the validation split (the test split when there is none, so that a search
  choosing on a gradient angle never reads the test set) drawn once by a generator seeded
  with the run's seed. The model is in training
  mode, as training sees it; the function restores every state it touches. Logged as
  ``grad_angle/<layer>``, ``mean_grad_angle`` (mean over layers) and ``last_grad_angle``
  (the output layer).
- **Weight snapshots**: the same seeded sample of up to ``runtime.snapshots.DEFAULT_LIMIT``
  (W, B) entry pairs per layer, one ``weights/step-<step>.npz`` per evaluation step, and one
  at step 0 (the initialisation) when a run starts.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, default_collate

from neural_alignment.core.metrics import gradient_angle
from neural_alignment.runtime import snapshots
from neural_alignment.runtime.data import dataset_length
from neural_alignment.runtime.logger import layer_metric_key

GRADIENT_BATCH = 256


def fixed_batch(dataset: Dataset, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``min(size, len(dataset))`` items drawn without replacement by a generator seeded with ``seed``, collated."""
    generator = torch.Generator().manual_seed(seed)
    indices = torch.randperm(dataset_length(dataset), generator=generator)[: min(size, dataset_length(dataset))]
    return default_collate([dataset[i] for i in indices.tolist()])


def gradient_angle_metrics(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, float]:
    """``grad_angle/<layer>`` per aligned layer the loss reaches, their mean and the last layer's."""
    with torch.enable_grad():
        angles = gradient_angle(model, batch, F.cross_entropy)
    if not angles:
        return {}
    out = {layer_metric_key("grad_angle", layer): value for layer, value in angles.items()}
    out.update(mean_grad_angle=sum(angles.values()) / len(angles), last_grad_angle=angles[list(angles)[-1]])
    return out


class EvaluationProbes:
    """Gradient angles and a weight snapshot of ``model`` at each evaluation step of a run."""

    def __init__(
        self,
        model: nn.Module,
        held_out: Dataset,
        run_dir: str | Path,
        seed: int,
        device: torch.device,
        dtype: torch.dtype,
        step: int,
    ):
        x, y = fixed_batch(held_out, GRADIENT_BATCH, seed)
        self.batch = (x.to(device=device, dtype=dtype), y.to(device))
        self.indices = snapshots.sample_indices(model, seed)
        self.run_dir = Path(run_dir)
        if step == 0:
            snapshots.save_snapshot(self.run_dir, 0, model, self.indices)

    def record(self, model: nn.Module, step: int) -> dict[str, float]:
        """Write the snapshot of ``step``; return the gradient-angle metrics."""
        snapshots.save_snapshot(self.run_dir, step, model, self.indices)
        return gradient_angle_metrics(model, self.batch)
