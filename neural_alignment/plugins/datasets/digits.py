"""``digits``: scikit-learn's 8x8 handwritten digits (1797 images, shipped with scikit-learn).

Pixels (0..16) are scaled to [0, 1]: ``x = p / 16``, shape (1, 8, 8), 10 classes. The
test set is a fixed seeded draw of ``test_size`` images; the rest is the training set.
"""

from __future__ import annotations

import os

import torch
from torch.utils.data import TensorDataset

from neural_alignment.core.errors import UserError
from neural_alignment.core.options import checked_options
from neural_alignment.runtime.data import DataSplits


@checked_options("dataset 'digits'")
def digits(
    root: str | os.PathLike | None = None,
    *,
    test_size: int = 360,
    seed: int = 0,
    limit_train: int | None = None,
    limit_test: int | None = None,
) -> DataSplits:
    """scikit-learn digits: 1797 8x8 grey images, 10 classes (``root`` is not used: the data ships with
    scikit-learn)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).div_(16).unsqueeze(1)
    y = torch.tensor(bunch.target, dtype=torch.int64)
    if not 0 < test_size < len(y):
        raise UserError(f"option 'test_size' of dataset 'digits' must be in 1..{len(y) - 1}, got {test_size!r}")
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    test, train = order[:test_size], order[test_size:]
    splits = DataSplits(TensorDataset(x[train], y[train]), TensorDataset(x[test], y[test]), 10, (1, 8, 8), "digits")
    return splits.limited(limit_train, limit_test)
