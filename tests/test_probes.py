"""Gradient angles and weight snapshots recorded by the trainer at each evaluation step."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from neural_alignment.api import convert
from neural_alignment.plugins.architectures.mlp import mlp
from neural_alignment.recipes.loader import load_recipe
from neural_alignment.runtime import snapshots
from neural_alignment.training.probes import GRADIENT_BATCH, fixed_batch, gradient_angle_metrics
from neural_alignment.training.trainer import train

TINY = [
    "data.train_limit=256",
    "data.test_limit=100",
    "data.batch_size=32",
    "model.options.hidden=[40]",
    "train.steps=6",
    "train.metrics_every=2",
    "train.eval_every=3",
    "train.progress=false",
    "log.loggers=[jsonl]",
]


def run(tmp_path, rule, *extra):
    return train(load_recipe("digits-mlp", [*TINY, f"rule.name={rule}", *extra]), tmp_path / rule)


def logged(run_dir, key):
    import json

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row[key] for row in rows if key in row}


def degrees(a, b):
    a, b = a.double().reshape(-1), b.double().reshape(-1)
    return math.degrees(math.acos(max(-1.0, min(1.0, float(a @ b / (a.norm() * b.norm()))))))


def test_gradient_angle_is_zero_under_bp(tmp_path):
    result = run(tmp_path, "bp")
    for key in ("grad_angle/1", "grad_angle/3", "mean_grad_angle", "last_grad_angle"):
        assert logged(result.run_dir, key) == {3: 0.0, 6: 0.0}
    assert result.summary["mean_grad_angle"] == 0.0 and not any("/" in k for k in result.summary)


def test_gradient_angle_is_zero_when_b_equals_w():
    torch.manual_seed(0)
    model = convert(mlp(10, (1, 8, 8), hidden=(12, 12)), rule="sa")
    with torch.no_grad():
        for layer in (model[1], model[3], model[5]):
            layer.backward_weight.copy_(layer.weight)
    batch = (torch.rand(20, 1, 8, 8), torch.randint(0, 10, (20,)))
    angles = gradient_angle_metrics(model, batch)
    assert set(angles) == {"grad_angle/1", "grad_angle/3", "grad_angle/5", "mean_grad_angle", "last_grad_angle"}
    assert all(value < 1e-3 for value in angles.values())
    with torch.no_grad():
        model[5].backward_weight.mul_(-1)  # the classifier's B = -W: every gradient below is reversed
    assert gradient_angle_metrics(model, batch)["grad_angle/1"] > 179.9


@pytest.mark.parametrize("split", ["test", "val"])
def test_logged_gradient_angle_equals_a_hand_computation_on_the_two_layer_net(tmp_path, split):
    extra = ["data.val_split=64"] if split == "val" else []  # with a validation split, never the test set
    result = run(tmp_path, "fa", *extra)
    model = result.model
    x, y = fixed_batch(load_split(split, extra), GRADIENT_BATCH, seed=0)
    x = x.flatten(1)
    W1, b1, B1 = model[1].weight, model[1].bias, model[1].backward_weight
    W2, b2, B2 = model[3].weight, model[3].bias, model[3].backward_weight
    with torch.no_grad():
        pre = x @ W1.T + b1
        h = pre.relu()
        dlogits = (F.softmax(h @ W2.T + b2, dim=1) - F.one_hot(y, 10)) / len(y)  # d mean cross-entropy / d logits
        fake_h, true_h = dlogits @ B2, dlogits @ W2
        fake_x, true_x = (fake_h * (pre > 0)) @ B1, (true_h * (pre > 0)) @ W1
    last = logged(result.run_dir, "grad_angle/3")[6], logged(result.run_dir, "grad_angle/1")[6]
    assert abs(last[0] - degrees(fake_h, true_h)) < 1e-3 and abs(last[1] - degrees(fake_x, true_x)) < 1e-3
    assert last[0] > 10  # fa: B random, so the angle is far from 0
    assert logged(result.run_dir, "mean_grad_angle")[6] == sum(last) / 2
    assert logged(result.run_dir, "last_grad_angle")[6] == last[0]


def load_split(split="test", extra=()):
    from neural_alignment.training.build import build_data

    return getattr(build_data(load_recipe("digits-mlp", [*TINY, *extra])), split)


def test_snapshots_hold_a_fixed_sample_of_w_b_pairs(tmp_path):
    result = run(tmp_path, "sa")
    assert snapshots.snapshot_steps(result.run_dir) == [0, 3, 6]
    files = [np.load(result.run_dir / "weights" / f"step-{s:08d}.npz") for s in (0, 3, 6)]
    assert set(files[0].files) == {"1", "3", "index:1", "index:3"}
    assert files[0]["1"].shape == (2000, 2) and files[0]["3"].shape == (400, 2)  # 40 x 64 sampled; 10 x 40 whole
    assert files[0]["1"].dtype == np.float32
    for name in ("1", "3"):
        assert all(np.array_equal(f[f"index:{name}"], files[0][f"index:{name}"]) for f in files)
        index = torch.from_numpy(files[2][f"index:{name}"])
        layer = dict(result.model.named_modules())[name]
        W = layer.weight.detach().reshape(-1)[index]
        B = layer.backward_weight.detach().reshape(-1)[index]
        np.testing.assert_array_equal(files[2][name], torch.stack([W, B], 1).numpy())
    assert not np.array_equal(files[0]["1"], files[2]["1"])  # B moved towards W
    assert len(np.unique(files[0]["index:1"])) == 2000


def test_probes_do_not_change_training_with_batchnorm(tmp_path):
    common = [
        "model.arch=convnet",
        "model.options={channels: [4, 8]}",
        "rule.name=fa",
        "train.steps=3",
        "data.test_limit=32",
    ]
    quiet = train(load_recipe("digits-mlp", [*TINY, *common, "train.eval_every=0"]), tmp_path / "q").model
    probed = train(load_recipe("digits-mlp", [*TINY, *common, "train.eval_every=1"]), tmp_path / "p").model
    assert all(
        torch.equal(a, b) for a, b in zip(quiet.state_dict().values(), probed.state_dict().values(), strict=True)
    )
    assert snapshots.snapshot_steps(tmp_path / "p") == [0, 1, 2, 3]
