"""The order of training examples: one seeded permutation per epoch, sliced into steps."""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Sampler


class StepBatches(Sampler):
    """Batches of indices for global steps ``start .. total - 1``.

    Step ``s`` takes slice ``s mod spe`` of epoch ``s // spe``'s permutation, drawn from a
    generator seeded with ``(seed, epoch)`` (spe = n // batch_size; the remainder is dropped).
    """

    def __init__(self, n: int, batch_size: int, seed: int, start: int, total: int):
        self.n, self.batch_size, self.seed, self.start, self.total = n, batch_size, seed, start, total
        self.steps_per_epoch = n // batch_size

    def permutation(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n, generator=generator)

    def __iter__(self) -> Iterator[list[int]]:
        epoch, perm = None, None
        for step in range(self.start, self.total):
            e, i = divmod(step, self.steps_per_epoch)
            if e != epoch:
                epoch, perm = e, self.permutation(e)
            yield perm[i * self.batch_size:(i + 1) * self.batch_size].tolist()

    def __len__(self) -> int:
        return self.total - self.start
