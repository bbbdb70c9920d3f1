"""``synthetic``: seeded Gaussian inputs of any shape labelled by a fixed random linear teacher.

    x ~ N(0, I) of shape ``shape``,   y = argmax_k (flatten(x) T)_k,   T ~ N(0, 1)^(prod(shape) x num_classes)

The labels are a linear function of the input, so any network can learn them; the same
seed gives the same data. For tests and benchmarks: nothing is read from disk.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch
from torch.utils.data import TensorDataset

from neural_alignment.core.errors import UserError
from neural_alignment.core.options import checked_options
from neural_alignment.runtime.data import DataSplits


@checked_options("dataset 'synthetic'")
def synthetic(
    root: str | os.PathLike | None = None,
    *,
    shape: Sequence[int] = (1, 8, 8),
    num_classes: int = 10,
    train_size: int = 512,
    test_size: int = 128,
    seed: int = 0,
    limit_train: int | None = None,
    limit_test: int | None = None,
) -> DataSplits:
    """Synthetic classification: Gaussian inputs of any shape, labels from a fixed random linear teacher
    (``root`` unused)."""
    in_shape = tuple(int(d) for d in shape)
    for option, value, least in (
        ("num_classes", num_classes, 2),
        ("train_size", train_size, 1),
        ("test_size", test_size, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise UserError(f"option {option!r} of dataset 'synthetic' must be an integer >= {least}, got {value!r}")
    if not in_shape or min(in_shape) < 1:
        raise UserError(f"option 'shape' of dataset 'synthetic' must be positive sizes, got {shape!r}")
    generator = torch.Generator().manual_seed(seed)
    teacher = torch.randn(math.prod(in_shape), num_classes, generator=generator)
    x = torch.randn(train_size + test_size, *in_shape, generator=generator)
    y = (x.flatten(1) @ teacher).argmax(dim=1)
    train = TensorDataset(x[:train_size], y[:train_size])
    test = TensorDataset(x[train_size:], y[train_size:])
    return DataSplits(train, test, num_classes, in_shape, "synthetic").limited(limit_train, limit_test)
