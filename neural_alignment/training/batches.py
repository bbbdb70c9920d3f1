"""The order of training examples: one seeded permutation per epoch, sliced into steps, and each
step's global batch sliced among the processes of a data-parallel run."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Dataset, Sampler, Subset

from neural_alignment.runtime.data import dataset_length


class StepBatches(Sampler):
    """This process's batches of indices for global steps ``start .. total - 1``.

    Step ``s``'s global batch is slice ``s mod spe`` of epoch ``s // spe``'s permutation, drawn
    from a generator seeded with ``(seed, epoch)`` (spe = n // batch_size; the remainder is
    dropped). Process ``rank`` of ``world_size`` takes the global batch's contiguous part
    ``rank * b .. (rank + 1) * b - 1`` (b = batch_size / world_size), so the sequence of global
    batches depends on neither the number of processes nor where a run resumed.
    """

    def __init__(self, n: int, batch_size: int, seed: int, start: int, total: int, rank: int = 0, world_size: int = 1):
        if batch_size % world_size:
            raise ValueError(f"batch size {batch_size} is not divisible by {world_size} processes")
        self.n, self.batch_size, self.seed, self.start, self.total = n, batch_size, seed, start, total
        self.steps_per_epoch = n // batch_size
        self.local = batch_size // world_size
        self.offset = rank * self.local

    def permutation(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n, generator=generator)

    def __iter__(self) -> Iterator[list[int]]:
        epoch, perm = None, torch.empty(0, dtype=torch.long)  # both replaced at the first step
        for step in range(self.start, self.total):
            e, i = divmod(step, self.steps_per_epoch)
            if e != epoch:
                epoch, perm = e, self.permutation(e)
            first = i * self.batch_size + self.offset
            yield perm[first : first + self.local].tolist()

    def __len__(self) -> int:
        return self.total - self.start


def process_share(dataset: Dataset, rank: int, world_size: int) -> Dataset:
    """Examples ``rank, rank + world_size, ...`` of ``dataset`` (all of it in one process)."""
    return dataset if world_size == 1 else Subset(dataset, range(rank, dataset_length(dataset), world_size))
