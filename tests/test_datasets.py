"""Built-in datasets: the IDX reader and MNIST-format loader on files written here, the real
Fashion-MNIST when installed, CIFAR-10 pickles, digits, synthetic, subsets, the missing-data
message and the torchvision-missing message."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from neural_alignment.core.errors import UserError
from neural_alignment.plugins.datasets.idx import read_idx
from neural_alignment.registry import Registry
from neural_alignment.runtime.data import DataSplits, random_subset

FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="module")
def datasets():
    return Registry(autoload=False).catalog("datasets")


@pytest.fixture(autouse=True)
def no_data_env(monkeypatch):
    monkeypatch.delenv("NALIGN_DATA", raising=False)


def write_idx(path: Path, array: np.ndarray, code: int) -> None:
    """An IDX file written independently of the reader: magic, big-endian dims, big-endian values."""
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    body = array.astype(array.dtype.newbyteorder(">")).tobytes()
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(header + body)


def write_mnist_folder(folder: Path, n_train=12, n_test=5, size=6, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    data = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
        labels = rng.integers(0, 10, n).astype(np.uint8)
        labels[: 10 if n >= 10 else n] = np.arange(min(n, 10))
        write_idx(folder / f"{split}-images-idx3-ubyte.gz", images, 0x08)
        write_idx(folder / f"{split}-labels-idx1-ubyte.gz", labels, 0x08)
        data[split] = (images, labels)
    return data


@pytest.mark.parametrize(
    "name, dtype, code",
    [
        ("a.gz", np.uint8, 0x08),
        ("b", np.int8, 0x09),
        ("c.gz", np.int16, 0x0B),
        ("d", np.int32, 0x0C),
        ("e.gz", np.float32, 0x0D),
        ("f", np.float64, 0x0E),
    ],
)
def test_read_idx_round_trips_every_type(tmp_path, name, dtype, code):
    array = (np.arange(2 * 3 * 4) - 7).reshape(2, 3, 4).astype(dtype)
    write_idx(tmp_path / name, array, code)
    read = read_idx(tmp_path / name)
    assert read.shape == (2, 3, 4) and read.dtype.kind == np.dtype(dtype).kind
    np.testing.assert_array_equal(read, array)


def test_read_idx_rejects_bad_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01\x00\x00\x00\x01\x05")
    with pytest.raises(UserError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
    write_idx(tmp_path / "short", np.zeros(5, np.uint8), 0x08)
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-1])
    with pytest.raises(UserError, match="promises 5"):
        read_idx(tmp_path / "short")
    (tmp_path / "broken.gz").write_bytes(b"not gzip at all")
    with pytest.raises(UserError, match=r"broken\.gz"):
        read_idx(tmp_path / "broken.gz")


def test_mnist_format_loader_standardises_with_train_statistics(tmp_path, datasets):
    data = write_mnist_folder(tmp_path / "digits-like")
    splits = datasets.get("mnist")(root=tmp_path / "digits-like")
    assert (splits.name, splits.in_shape, splits.num_classes) == ("mnist", (1, 6, 6), 10)
    assert (len(splits.train), len(splits.test)) == (12, 5)
    train_pixels = data["train"][0] / 255.0
    mean, std = train_pixels.mean(), train_pixels.std()
    for dataset, split in ((splits.train, "train"), (splits.test, "t10k")):
        images, labels = data[split]
        x, y = dataset[3]
        assert x.dtype == torch.float32 and x.shape == (1, 6, 6) and y.dtype == torch.int64
        np.testing.assert_allclose(x[0].numpy(), (images[3] / 255.0 - mean) / std, rtol=1e-5, atol=1e-5)
        assert int(y) == labels[3]
    raw = datasets.get("mnist")(root=tmp_path / "digits-like", normalize=False)
    np.testing.assert_allclose(raw.train[0][0][0].numpy(), data["train"][0][0] / 255.0, rtol=1e-6)


def test_nalign_data_folder_is_searched(tmp_path, datasets, monkeypatch):
    write_mnist_folder(tmp_path / "mnist")
    monkeypatch.setenv("NALIGN_DATA", str(tmp_path))
    assert len(datasets.get("mnist")().train) == 12


def test_missing_dataset_is_one_message_with_every_place_and_how_to_get_it(tmp_path, datasets, monkeypatch):
    monkeypatch.setenv("NALIGN_DATA", str(tmp_path))
    with pytest.raises(UserError) as info:
        datasets.get("mnist")()
    message = str(info.value)
    assert "dataset 'mnist' not found" in message
    assert str(tmp_path / "mnist") in message and "/usr/share/datasets/mnist" in message
    assert "NALIGN_DATA" in message and "root=" in message

    partial = tmp_path / "partial"
    write_mnist_folder(partial)
    (partial / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(UserError) as info:
        datasets.get("fashion_mnist")(root=partial)
    message = str(info.value)
    assert f"{partial} (lacks t10k-labels-idx1-ubyte.gz)" in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "/usr/share/datasets" not in message  # an explicit root is the only place looked


@pytest.mark.skipif(
    not (FMNIST_DIR / "train-images-idx3-ubyte.gz").exists(), reason="dataset-fashion-mnist not installed"
)
def test_real_fashion_mnist(datasets):
    splits = datasets.get("fashion_mnist")()
    assert (len(splits.train), len(splits.test), splits.in_shape, splits.num_classes) == (60000, 10000, (1, 28, 28), 10)
    x, y = splits.train.tensors
    assert x.dtype == torch.float32 and x.shape == (60000, 1, 28, 28) and y.dtype == torch.int64
    assert abs(x.mean().item()) < 1e-3 and abs(x.std().item() - 1) < 1e-3
    assert torch.equal(torch.bincount(y), torch.full((10,), 6000))
    assert torch.equal(torch.bincount(splits.test.tensors[1]), torch.full((10,), 1000))


def write_cifar_folder(folder: Path, per_batch=2, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, per_batch)]
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": labels, b"batch_label": name.encode()}, f)
        batches[name] = (data, labels)
    return batches


def test_cifar10_pickles(tmp_path, datasets):
    batches = write_cifar_folder(tmp_path / "cifar-10-batches-py")
    splits = datasets.get("cifar10")(root=tmp_path)  # the archive's folder is found below root
    assert (len(splits.train), len(splits.test), splits.in_shape, splits.num_classes) == (10, 2, (3, 32, 32), 10)
    train = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)]).reshape(10, 3, 32, 32) / 255.0
    mean, std = train.mean(axis=(0, 2, 3)), train.std(axis=(0, 2, 3))
    x, y = splits.train[7]  # batch 4, second image
    np.testing.assert_allclose(x.numpy(), (train[7] - mean[:, None, None]) / std[:, None, None], rtol=1e-5, atol=1e-5)
    assert int(y) == batches["data_batch_4"][1][1]
    test_image = batches["test_batch"][0][1].reshape(3, 32, 32) / 255.0
    np.testing.assert_allclose(
        splits.test[1][0].numpy(), (test_image - mean[:, None, None]) / std[:, None, None], rtol=1e-5, atol=1e-5
    )


def test_cifar10_augmentation_is_a_padded_shift_and_flip(tmp_path, datasets):
    write_cifar_folder(tmp_path / "c")
    plain = datasets.get("cifar10")(root=tmp_path / "c")
    augmented = datasets.get("cifar10")(root=tmp_path / "c", augment=True)
    x = plain.train[0][0]
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    candidates = [
        view
        for top in range(9)
        for left in range(9)
        for view in (padded[:, top : top + 32, left : left + 32], padded[:, top : top + 32, left : left + 32].flip(-1))
    ]
    torch.manual_seed(0)
    seen = set()
    for _ in range(20):
        out, label = augmented.train[0]
        matches = [i for i, c in enumerate(candidates) if torch.equal(out, c)]
        assert matches and int(label) == int(plain.train[0][1])
        seen.add(matches[0])
    assert len(seen) > 1  # it does move


def test_cifar10_rejects_a_file_that_is_not_a_batch(tmp_path, datasets):
    write_cifar_folder(tmp_path / "c")
    with open(tmp_path / "c" / "test_batch", "wb") as f:
        pickle.dump({b"something": 1}, f)
    with pytest.raises(UserError, match="test_batch is not a CIFAR-10 python batch"):
        datasets.get("cifar10")(root=tmp_path / "c")


def test_digits(datasets):
    splits = datasets.get("digits")()
    assert (len(splits.train), len(splits.test), splits.in_shape, splits.num_classes) == (1437, 360, (1, 8, 8), 10)
    x, y = splits.train.tensors
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.min() == 0 and x.max() == 1
    from sklearn.datasets import load_digits

    all_images = torch.tensor(load_digits().images, dtype=torch.float32) / 16
    # every test image is a digits image, and train and test together are all of them
    combined = torch.cat([x, splits.test.tensors[0]])[:, 0].flatten(1)
    assert torch.equal(combined.sort(dim=0).values, all_images.flatten(1).sort(dim=0).values)
    again, other = datasets.get("digits")(), datasets.get("digits")(seed=1)
    assert torch.equal(again.test.tensors[0], splits.test.tensors[0])
    assert not torch.equal(other.test.tensors[0], splits.test.tensors[0])


def test_synthetic_is_seeded_any_shape_and_learnable(datasets):
    from sklearn.linear_model import LogisticRegression

    splits = datasets.get("synthetic")(shape=[3, 2, 2], num_classes=4, train_size=800, test_size=200, seed=3)
    assert (splits.in_shape, splits.num_classes, len(splits.train), len(splits.test)) == ((3, 2, 2), 4, 800, 200)
    x, y = splits.train.tensors
    assert x.shape == (800, 3, 2, 2) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert set(y.tolist()) == {0, 1, 2, 3}
    same = datasets.get("synthetic")(shape=[3, 2, 2], num_classes=4, train_size=800, test_size=200, seed=3)
    assert torch.equal(same.train.tensors[0], x) and torch.equal(same.test.tensors[1], splits.test.tensors[1])
    assert not torch.equal(
        datasets.get("synthetic")(shape=[3, 2, 2], num_classes=4, seed=4).train.tensors[0][:5], x[:5]
    )
    # the labels are a linear function of the input: a linear classifier learns them
    model = LogisticRegression(max_iter=2000).fit(x.flatten(1).numpy(), y.numpy())
    xt, yt = splits.test.tensors
    assert model.score(xt.flatten(1).numpy(), yt.numpy()) > 0.85


def test_limits_are_seeded_random_subsets(datasets):
    full = datasets.get("synthetic")(train_size=50, test_size=20)
    cut = datasets.get("synthetic")(train_size=50, test_size=20, limit_train=10, limit_test=30)
    assert (len(cut.train), len(cut.test)) == (10, 20)
    rows = {tuple(full.train[i][0].flatten().tolist()) for i in range(50)}
    picked = [tuple(cut.train[i][0].flatten().tolist()) for i in range(10)]
    assert set(picked) <= rows and len(set(picked)) == 10
    assert picked != [tuple(full.train[i][0].flatten().tolist()) for i in range(10)]  # not just the first ten
    again = datasets.get("synthetic")(train_size=50, test_size=20, limit_train=10)
    assert [tuple(again.train[i][0].flatten().tolist()) for i in range(10)] == picked
    with pytest.raises(UserError, match="limit_train"):
        full.limited(limit_train=0)
    assert random_subset(full.test, None) is full.test


def test_datasplits_contract():
    splits = DataSplits(torch.utils.data.TensorDataset(torch.zeros(3, 2)), [], 2, (2,), "x")
    assert splits.limited().train is splits.train


def test_imagefolder_without_torchvision_says_how_to_install(tmp_path, datasets):
    try:
        import torchvision  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("torchvision is installed")
    for name in ("imagefolder", "imagenet"):
        (tmp_path / "train" / "cat").mkdir(parents=True, exist_ok=True)
        (tmp_path / "val" / "cat").mkdir(parents=True, exist_ok=True)
        with pytest.raises(UserError) as info:
            datasets.get(name)(root=tmp_path)
        assert f"dataset {name!r} needs torchvision" in str(info.value)
        assert "neural-alignment[vision]" in str(info.value)


def test_unknown_dataset_option(datasets):
    with pytest.raises(UserError, match=r"unknown option 'limit' for dataset 'digits'.*limit_train"):
        datasets.get("digits")(limit=5)


def test_registered_names(datasets):
    assert set(datasets.names()) == {
        "cifar10",
        "digits",
        "fashion_mnist",
        "imagefolder",
        "imagenet",
        "mnist",
        "synthetic",
    }
