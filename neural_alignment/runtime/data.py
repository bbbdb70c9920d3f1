"""What a dataset plugin returns: :class:`DataSplits`, a train and a test set with their shapes.

A validation set is carved out of the training set by :meth:`DataSplits.with_validation`
(seeded, class-stratified), so that a search or a model choice never reads the test set.

A dataset builder is registered through ``register_datasets`` and called as
``builder(root=None, **options) -> DataSplits``. Every item of ``train`` and ``test`` is a
pair ``(x, y)``: ``x`` a float32 tensor of shape ``in_shape``, ``y`` an int64 class index in
``[0, num_classes)`` (a 0-dim tensor or a Python int).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from neural_alignment.core.errors import UserError


def dataset_length(dataset: Dataset) -> int:
    """``len(dataset)``: every dataset of a split is map-style, with a length."""
    return len(dataset)  # type: ignore[arg-type]  # torch's Dataset type declares no __len__


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
    if size >= dataset_length(dataset):
        return dataset
    generator = torch.Generator().manual_seed(seed)
    indices = torch.randperm(dataset_length(dataset), generator=generator)[:size]
    return Subset(dataset, indices.tolist())


def labels_of(dataset: Dataset) -> torch.Tensor:
    """Every item's class index (int64), read without loading the inputs where the dataset allows:
    a ``TensorDataset``'s second tensor, a ``Subset``'s parent labels at its indices, a
    ``targets`` attribute (torchvision), else one pass over the items."""
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[1].long()
    if isinstance(dataset, Subset):
        return labels_of(dataset.dataset)[torch.as_tensor(dataset.indices, dtype=torch.long)]
    targets = getattr(dataset, "targets", None)
    if targets is not None:
        return torch.as_tensor(targets, dtype=torch.long)
    return torch.tensor([int(dataset[i][1]) for i in range(dataset_length(dataset))], dtype=torch.long)


def holdout_count(size: float | int, total: int) -> int:
    """How many of ``total`` items ``size`` holds out: a fraction ``0 < size < 1`` of them
    (rounded, at least 1), or a whole count ``1 <= size < total``."""
    if isinstance(size, bool) or not isinstance(size, (int, float)) or not size > 0:
        raise UserError(f"data.val_split must be a fraction in (0, 1) or a count >= 1, got {size!r}")
    if size < 1:
        count = max(1, round(size * total))
    elif float(size).is_integer():
        count = int(size)
    else:
        raise UserError(f"data.val_split={size!r}: a count must be a whole number (a fraction must be < 1)")
    if count >= total:
        raise UserError(f"data.val_split={size!r} holds out {count} of only {total} training examples")
    return count


def stratified_indices(labels: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """``count`` indices drawn per class in proportion to the class's size (sorted).

    Class c of n_c items (n in all) gets floor(count * n_c / n) items; the remainder goes one
    each to the classes with the largest fractional parts (ties: the lower class index).
    Inside a class the items are a seeded random draw.
    """
    generator = torch.Generator().manual_seed(seed)
    classes, sizes = torch.unique(labels, return_counts=True)
    quotas = count * sizes.double() / len(labels)
    taken = quotas.floor().long()
    remainder = count - int(taken.sum())
    order = sorted(range(len(classes)), key=lambda i: (-(quotas[i] - taken[i]).item(), i))
    for i in order[:remainder]:
        taken[i] += 1
    chosen = []
    for label, k in zip(classes.tolist(), taken.tolist(), strict=True):
        members = (labels == label).nonzero().flatten()
        chosen.append(members[torch.randperm(len(members), generator=generator)[:k]])
    return torch.cat(chosen).sort().values


@dataclass(frozen=True)
class DataSplits:
    """A train and a test set of one classification task.

    ``in_shape`` is the shape of one input (e.g. ``(1, 28, 28)``), ``num_classes`` the
    number of labels, ``name`` the dataset's registered name. ``val`` is ``None`` unless
    :meth:`with_validation` held part of the training set out.
    """

    train: Dataset
    test: Dataset
    num_classes: int
    in_shape: tuple[int, ...]
    name: str
    val: Dataset | None = None

    def limited(self, limit_train: int | None = None, limit_test: int | None = None, seed: int = 0) -> DataSplits:
        """The same splits cut to at most ``limit_train``/``limit_test`` items (seeded random subsets)."""
        return dataclasses.replace(
            self,
            train=random_subset(self.train, limit_train, seed, "limit_train"),
            test=random_subset(self.test, limit_test, seed + 1, "limit_test"),
        )

    def with_validation(self, size: float | int | None, seed: int = 0) -> DataSplits:
        """The training set split into ``train`` and ``val``: ``size`` (a fraction or a count, see
        :func:`holdout_count`) of it held out, class-stratified (:func:`stratified_indices`), seeded.
        ``None`` returns the splits unchanged."""
        if size is None:
            return self
        labels = labels_of(self.train)
        held = stratified_indices(labels, holdout_count(size, len(labels)), seed)
        keep = torch.ones(len(labels), dtype=torch.bool)
        keep[held] = False
        return dataclasses.replace(
            self, train=Subset(self.train, keep.nonzero().flatten().tolist()), val=Subset(self.train, held.tolist())
        )
