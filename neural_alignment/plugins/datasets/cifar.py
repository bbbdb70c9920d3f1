"""``cifar10``: the python-pickle batches (``data_batch_1..5``, ``test_batch``) from a folder.

Each batch is a pickled dict with ``b"data"`` (N x 3072 uint8, channel-major 32x32 planes)
and ``b"labels"``. Pixels are scaled to [0, 1] and standardised per channel with the
training set's mean and std. ``augment=True`` adds the usual training augmentation: a
random 32x32 crop of the image zero-padded by 4 (zero is the mean after standardising)
and a horizontal flip with probability 1/2.

The batches are pickles: only load files you trust (they are the official download).
"""

from __future__ import annotations

import dataclasses
import os
import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset

from neural_alignment.core.errors import UserError
from neural_alignment.core.options import checked_options
from neural_alignment.plugins.datasets.paths import candidate_roots, find_folder
from neural_alignment.runtime.data import DataSplits, dataset_length

TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)
ARCHIVE_FOLDER = "cifar-10-batches-py"
HOW_TO_GET = (
    "Download cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html and extract it"
    f" (it unpacks to {ARCHIVE_FOLDER}/)."
)


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) uint8 and labels (N,) int64 of one pickled batch."""
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        images = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except (OSError, pickle.UnpicklingError, KeyError, ValueError, TypeError, EOFError) as exc:
        raise UserError(f"{path} is not a CIFAR-10 python batch: {type(exc).__name__}: {exc}") from None
    if len(images) != len(labels):
        raise UserError(f"{path} holds {len(images)} images but {len(labels)} labels")
    return images, labels


def read_cifar_split(folder: Path, files: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    batches = [read_cifar_batch(folder / name) for name in files]
    return np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])


class RandomCropFlip(Dataset):
    """``base``'s images randomly shifted (crop of the zero-padded image) and flipped; labels kept."""

    def __init__(self, base: Dataset, padding: int = 4):
        self.base, self.padding = base, padding

    def __len__(self) -> int:
        return dataset_length(self.base)

    def __getitem__(self, index):
        x, y = self.base[index]
        _, height, width = x.shape
        top, left = torch.randint(0, 2 * self.padding + 1, (2,)).tolist()
        x = F.pad(x, (self.padding,) * 4)[:, top : top + height, left : left + width]
        if torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x, y


@checked_options("dataset 'cifar10'")
def cifar10(
    root: str | os.PathLike | None = None,
    *,
    augment: bool = False,
    limit_train: int | None = None,
    limit_test: int | None = None,
) -> DataSplits:
    """CIFAR-10: 50k/10k 32x32 colour images, 10 classes (python-pickle batches)."""
    roots = [folder / sub for folder in candidate_roots("cifar10", root) for sub in ("", ARCHIVE_FOLDER)]
    folder = find_folder("cifar10", roots, TRAIN_FILES + TEST_FILES, HOW_TO_GET)
    train_images, train_labels = read_cifar_split(folder, TRAIN_FILES)
    test_images, test_labels = read_cifar_split(folder, TEST_FILES)
    mean = torch.from_numpy(train_images.mean(axis=(0, 2, 3), dtype=np.float64) / 255).float().view(1, 3, 1, 1)
    std = torch.from_numpy(train_images.std(axis=(0, 2, 3), dtype=np.float64) / 255).float().view(1, 3, 1, 1)

    def dataset(images: np.ndarray, labels: np.ndarray) -> TensorDataset:
        x = torch.from_numpy(images).float().div_(255).sub_(mean).div_(std)
        return TensorDataset(x, torch.from_numpy(labels))

    splits = DataSplits(
        dataset(train_images, train_labels), dataset(test_images, test_labels), 10, (3, 32, 32), "cifar10"
    ).limited(limit_train, limit_test)
    return dataclasses.replace(splits, train=RandomCropFlip(splits.train)) if augment else splits
