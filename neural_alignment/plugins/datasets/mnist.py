"""``mnist`` and ``fashion_mnist``: the four IDX gzip files, loaded into memory.

Pixels are scaled to [0, 1], then standardised with the training set's mean and std:
``x = (p / 255 - mean) / std``. Shape (1, 28, 28), 10 classes.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch.utils.data import TensorDataset

from neural_alignment.core.errors import UserError
from neural_alignment.core.options import checked_options
from neural_alignment.plugins.datasets.idx import read_idx
from neural_alignment.plugins.datasets.paths import candidate_roots, find_folder
from neural_alignment.runtime.data import DataSplits

FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def read_split(folder, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) uint8 and labels (N,) of one split, checked to agree in N."""
    images_file, labels_file = FILES[split]
    images, labels = read_idx(folder / images_file), read_idx(folder / labels_file)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise UserError(
            f"{folder}: {images_file} has shape {images.shape} and {labels_file} {labels.shape};"
            " expected (N, H, W) images and N labels"
        )
    return images, labels


def load_idx_splits(name: str, folder, normalize: bool) -> DataSplits:
    """Both splits of an MNIST-format folder as in-memory tensors."""
    train_images, train_labels = read_split(folder, "train")
    test_images, test_labels = read_split(folder, "test")
    mean, std = 0.0, 1.0
    if normalize:
        mean = float(train_images.mean(dtype=np.float64)) / 255
        std = float(train_images.std(dtype=np.float64)) / 255

    def dataset(images: np.ndarray, labels: np.ndarray) -> TensorDataset:
        x = torch.from_numpy(images).unsqueeze(1).float().div_(255).sub_(mean).div_(std)
        return TensorDataset(x, torch.from_numpy(labels.astype(np.int64)))

    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    return DataSplits(
        dataset(train_images, train_labels),
        dataset(test_images, test_labels),
        num_classes,
        (1, *train_images.shape[1:]),
        name,
    )


def idx_dataset(name: str, system_folder: str, how_to_get: str, description: str):
    """The builder of an MNIST-format dataset ``name`` whose Debian package installs into ``system_folder``."""

    @checked_options(f"dataset {name!r}")
    def build(
        root: str | os.PathLike | None = None,
        *,
        normalize: bool = True,
        limit_train: int | None = None,
        limit_test: int | None = None,
    ) -> DataSplits:
        folder = find_folder(
            name, candidate_roots(name, root, system_folder), FILES["train"] + FILES["test"], how_to_get
        )
        return load_idx_splits(name, folder, normalize).limited(limit_train, limit_test)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = description
    return build


fashion_mnist = idx_dataset(
    "fashion_mnist",
    "/usr/share/datasets/fashion-mnist",
    "Install it with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or download the four"
    " *-ubyte.gz files from https://github.com/zalandoresearch/fashion-mnist.",
    "Fashion-MNIST: 60k/10k 28x28 grey clothing images, 10 classes (IDX gzip files).",
)
mnist = idx_dataset(
    "mnist",
    "/usr/share/datasets/mnist",
    "Download the four *-ubyte.gz files from https://yann.lecun.com/exdb/mnist/ (or a mirror).",
    "MNIST: 60k/10k 28x28 grey handwritten digits, 10 classes (IDX gzip files).",
)
