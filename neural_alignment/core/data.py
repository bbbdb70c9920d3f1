"""What a dataset plugin returns: :class:`DataSplits`, a train and a test set with their shapes.

A dataset builder is registered through ``register_datasets`` and called as
``builder(root=None, **options) -> DataSplits``. Every item of ``train`` and ``test`` is a
pair ``(x, y)``: ``x`` a float32 tensor of shape ``in_shape``, ``y`` an int64 class index in
``[0, num_classes)`` (a 0-dim tensor or a Python int).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset, Subset

from neural_alignment.core.errors import UserError


def random_subset(dataset: Dataset, size: int | None, seed: int = 0, what: str = "limit") -> Dataset:
    """``size`` items of ``dataset`` drawn without replacement by a seeded permutation.

    ``None`` or a size at least the dataset's length returns ``dataset`` itself. The draw is
    random rather than the first items so that a subset of a class-sorted folder still holds
    every class; the same seed gives the same subset.
    """
    if size is None:
        return dataset
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise UserError(f"{what} must be a positive integer or null, got {size!r}")
    if size >= len(dataset):
        return dataset
    generator = torch.Generator().manual_seed(seed)
    indices = torch.randperm(len(dataset), generator=generator)[:size]
    return Subset(dataset, indices.tolist())


@dataclass(frozen=True)
class DataSplits:
    """A train and a test set of one classification task.

    ``in_shape`` is the shape of one input (e.g. ``(1, 28, 28)``), ``num_classes`` the
    number of labels, ``name`` the dataset's registered name.
    """

    train: Dataset
    test: Dataset
    num_classes: int
    in_shape: tuple[int, ...]
    name: str

    def limited(self, limit_train: int | None = None, limit_test: int | None = None, seed: int = 0) -> DataSplits:
        """The same splits cut to at most ``limit_train``/``limit_test`` items (seeded random subsets)."""
        return dataclasses.replace(
            self,
            train=random_subset(self.train, limit_train, seed, "limit_train"),
            test=random_subset(self.test, limit_test, seed + 1, "limit_test"),
        )
