"""data.val_split: a seeded, class-stratified part of the training set held out; the trainer
reports val_* beside test_*, computed on exactly the held-out examples."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from neural_alignment.core.errors import UserError
from neural_alignment.recipes.loader import load_recipe
from neural_alignment.runtime.data import DataSplits, holdout_count, labels_of, stratified_indices
from neural_alignment.training.trainer import Trainer

TINY = [
    "data.dataset=digits",
    "data.train_limit=300",
    "data.test_limit=100",
    "data.batch_size=32",
    "model.arch=mlp",
    "model.options.hidden=[16]",
    "train.progress=false",
    "log.loggers=[jsonl]",
    "train.steps=5",
    "rule.name=fa",
]


def uneven():
    """Classes of 50, 30 and 20 items, in a shuffled order."""
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)[
        torch.randperm(100, generator=torch.Generator().manual_seed(3))
    ]
    return DataSplits(
        TensorDataset(torch.randn(100, 4), labels), TensorDataset(torch.randn(7, 4), torch.zeros(7)), 3, (4,), "toy"
    )


def test_fraction_is_stratified_disjoint_and_complete():
    splits = uneven().with_validation(0.2, seed=5)
    val, train = labels_of(splits.val), labels_of(splits.train)
    # 20 of 100 in proportion 50:30:20 -> exactly 10, 6, 4 (the quotas are whole numbers)
    assert torch.bincount(val).tolist() == [10, 6, 4]
    assert torch.bincount(train).tolist() == [40, 24, 16]
    held, kept = set(splits.val.indices), set(splits.train.indices)
    assert not held & kept and held | kept == set(range(100))
    assert len(splits.test) == 7  # the test set is untouched


def test_remainder_goes_to_the_largest_fractional_parts():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    # 7 * (0.5, 0.3, 0.2) = 3.5, 2.1, 1.4: floors 3, 2, 1 and the one left goes to class 0 (0.5 > 0.4 > 0.1)
    chosen = stratified_indices(labels, 7, seed=0)
    assert torch.bincount(labels[chosen], minlength=3).tolist() == [4, 2, 1]


def test_seeded():
    a = uneven().with_validation(0.3, seed=1).val.indices
    assert uneven().with_validation(0.3, seed=1).val.indices == a
    assert uneven().with_validation(0.3, seed=2).val.indices != a


@pytest.mark.parametrize("size, count", [(0.25, 25), (0.001, 1), (17, 17), (17.0, 17)])
def test_fraction_or_count(size, count):
    assert holdout_count(size, 100) == count


@pytest.mark.parametrize("size", [0, -0.5, 100, 250, 2.5, True, "a"])
def test_bad_sizes_are_user_errors_naming_the_key(size):
    with pytest.raises(UserError, match=r"data\.val_split"):
        holdout_count(size, 100)


def test_trainer_reports_val_metrics_on_the_held_out_examples(tmp_path):
    trainer = Trainer(load_recipe("digits-mlp", [*TINY, "data.val_split=0.2"]), tmp_path / "run")
    assert len(trainer.splits.val) == 60 and len(trainer.splits.train) == 240
    summary = trainer.run().summary
    assert {"val_loss", "val_acc", "test_loss", "test_acc"} <= set(summary)
    # an independent evaluation on the held-out items
    x = torch.stack([trainer.splits.val[i][0] for i in range(60)])
    y = torch.stack([torch.as_tensor(trainer.splits.val[i][1]) for i in range(60)])
    trainer.model.eval()
    with torch.no_grad():
        logits = trainer.model(x)
    assert summary["val_acc"] == pytest.approx((logits.argmax(1) == y).float().mean().item())
    assert summary["val_loss"] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)


def test_without_val_split_no_val_metrics(tmp_path):
    summary = Trainer(load_recipe("digits-mlp", TINY), tmp_path / "run").run().summary
    assert "val_acc" not in summary and "test_acc" in summary
