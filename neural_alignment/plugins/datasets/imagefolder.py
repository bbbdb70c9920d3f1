"""``imagefolder`` and ``imagenet``: class-per-subfolder image trees read by torchvision.

Layout: ``<root>/<train_dir>/<class>/*.jpeg`` and ``<root>/<test_dir>/<class>/*.jpeg``.
Transforms (the standard ImageNet ones), with ImageNet's channel mean/std:
  train: RandomResizedCrop(image_size) + RandomHorizontalFlip + ToTensor + Normalize
  test:  Resize(resize) + CenterCrop(image_size) + ToTensor + Normalize
torchvision is the optional ``vision`` extra (``pip install 'neural-alignment[vision]'``);
it is imported only when one of these datasets is built.
"""

from __future__ import annotations

import os

from neural_alignment.core.errors import UserError
from neural_alignment.core.options import checked_options
from neural_alignment.plugins.datasets.paths import candidate_roots, find_folder
from neural_alignment.runtime.data import DataSplits

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def import_torchvision(name: str):
    """torchvision, or a UserError saying how to install it."""
    try:
        import torchvision
    except ImportError:
        raise UserError(
            f"dataset {name!r} needs torchvision, which is not installed:"
            " pip install 'neural-alignment[vision]' (or pip install torchvision matching your torch)"
        ) from None
    return torchvision


def image_folder_builder(name: str, how_to_get: str, description: str):
    """The builder of an ImageFolder dataset registered as ``name``."""

    @checked_options(f"dataset {name!r}")
    def build(
        root: str | os.PathLike | None = None,
        *,
        train_dir: str = "train",
        test_dir: str = "val",
        image_size: int = 224,
        resize: int = 256,
        limit_train: int | None = None,
        limit_test: int | None = None,
    ) -> DataSplits:
        torchvision = import_torchvision(name)
        transforms = torchvision.transforms
        folder = find_folder(name, candidate_roots(name, root), (train_dir, test_dir), how_to_get)
        normalize = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
        train_transform = transforms.Compose(
            [
                transforms.RandomResizedCrop(image_size),
                transforms.RandomHorizontalFlip(),
                transforms.ToTensor(),
                normalize,
            ]
        )
        test_transform = transforms.Compose(
            [transforms.Resize(resize), transforms.CenterCrop(image_size), transforms.ToTensor(), normalize]
        )
        train = torchvision.datasets.ImageFolder(str(folder / train_dir), transform=train_transform)
        test = torchvision.datasets.ImageFolder(str(folder / test_dir), transform=test_transform)
        if train.classes != test.classes:
            raise UserError(
                f"dataset {name!r}: {folder / train_dir} and {folder / test_dir} have different class folders"
            )
        splits = DataSplits(train, test, len(train.classes), (3, image_size, image_size), name)
        return splits.limited(limit_train, limit_test)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = description
    return build


imagefolder = image_folder_builder(
    "imagefolder",
    "Give root=<folder> holding train/<class>/* and val/<class>/* images.",
    "Any class-per-subfolder image tree (torchvision ImageFolder, ImageNet transforms; needs the vision extra).",
)
imagenet = image_folder_builder(
    "imagenet",
    "Get ILSVRC-2012 from https://image-net.org/ and arrange train/ and val/ as one folder per class"
    " (e.g. with the valprep.sh script).",
    "ImageNet ILSVRC-2012, 1000 classes, 224 px (torchvision ImageFolder; needs the vision extra).",
)
