"""Weight snapshots: a fixed sample of (W, B) entry pairs per aligned layer, one file per step.

For the W-versus-B scatter of the appendix's Fig. S3. At each snapshot the same entries are
read: per layer (in module order, position p), ``min(limit, W.numel())`` flat indices drawn
without replacement by a generator seeded with ``seed * 1_000_003 + p``, sorted. A layer
without B (``bp``) propagates with W itself, so its pairs are (W, W).

File ``<run_dir>/weights/step-<step, 8 digits>.npz``: for each layer name, an array
``[k, 2]`` float32 of (W[i], B[i]) pairs, and under ``index:<layer>`` the k flat indices
(int64). ~16 KB per layer and step at the default 2,000 pairs.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from torch import nn

from neural_alignment.core.layers import aligned_layers

FOLDER = "weights"
DEFAULT_LIMIT = 2000
INDEX_PREFIX = "index:"
_FILE = re.compile(r"step-(\d+)\.npz")


def sample_indices(model: nn.Module, seed: int, limit: int = DEFAULT_LIMIT) -> dict[str, torch.Tensor]:
    """{layer: sorted flat indices of its sampled entries} (see the module docstring)."""
    out = {}
    for position, (name, layer) in enumerate(aligned_layers(model)):
        generator = torch.Generator().manual_seed(seed * 1_000_003 + position)
        n = layer.weight.numel()
        out[name] = torch.randperm(n, generator=generator)[: min(limit, n)].sort().values
    return out


def save_snapshot(run_dir: str | Path, step: int, model: nn.Module, indices: dict[str, torch.Tensor]) -> Path:
    """Write the (W, B) pairs at ``indices`` of every aligned layer for ``step``; returns the file."""
    layers = aligned_layers(model)
    pairs = []
    for name, layer in layers:
        index = indices[name].to(layer.weight.device)
        W = layer.weight.detach().reshape(-1)[index]
        B = W if layer.backward_weight is None else layer.backward_weight.detach().reshape(-1)[index]
        pairs.append(torch.stack([W, B], dim=1).float())
    # one read to the host for every layer (one graph on a lazy device)
    read = torch.cat(pairs).cpu().numpy() if pairs else np.zeros((0, 2), np.float32)
    arrays: dict[str, np.ndarray] = {}
    parts = np.split(read, np.cumsum([len(p) for p in pairs])[:-1])
    # strict=False: with no aligned layer, np.split still returns the one (empty) part
    for (name, _), part in zip(layers, parts, strict=False):
        arrays[name] = part
        arrays[INDEX_PREFIX + name] = indices[name].cpu().numpy()
    folder = Path(run_dir) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step-{step:08d}.npz"
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)  # type: ignore[arg-type]  # numpy's stub matches **arrays against allow_pickle: bool
    tmp.replace(path)
    return path


def snapshot_steps(run_dir: str | Path) -> list[int]:
    """The steps with a snapshot in ``run_dir``, ascending."""
    folder = Path(run_dir) / FOLDER
    matches = (_FILE.fullmatch(p.name) for p in folder.glob("step-*.npz")) if folder.is_dir() else ()
    return sorted(int(m.group(1)) for m in matches if m)


def load_snapshot(run_dir: str | Path, step: int) -> dict[str, np.ndarray]:
    """{layer: [k, 2] (W, B) pairs} of the snapshot at ``step``, layers in module order."""
    with np.load(Path(run_dir) / FOLDER / f"step-{step:08d}.npz") as npz:
        return {key: npz[key] for key in npz.files if not key.startswith(INDEX_PREFIX)}
