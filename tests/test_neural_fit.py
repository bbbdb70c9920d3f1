"""Appendix B.5: PLS fit of a trained layer's features to recorded responses, per-site r."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from neural_alignment.analysis import neural_fit
from neural_alignment.cli import main
from neural_alignment.recipes.loader import load_recipe
from neural_alignment.training.build import build_data
from neural_alignment.training.trained import load_trained_model

FEW = [
    "data.train_limit=256",
    "data.test_limit=64",
    "data.batch_size=32",
    "model.options.hidden=[24]",
    "train.steps=8",
    "train.eval_every=4",
    "train.progress=false",
    "log.loggers=[jsonl]",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("fit") / "run"
    assert main(["run", "digits-mlp", *FEW, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def images(run_dir):
    splits = build_data(load_recipe("digits-mlp", FEW))
    x = torch.stack([splits.train[i][0] for i in range(240)])
    labels = np.array([int(splits.train[i][1]) for i in range(240)])
    return x.numpy(), labels


def test_category_split_is_75_25_within_each_category_and_seeded():
    labels = np.repeat(np.arange(4), [8, 12, 4, 20])
    train, test = neural_fit.category_split(labels, seed=1)
    assert not set(train) & set(test) and len(train) + len(test) == len(labels)
    for category, n in zip(range(4), [8, 12, 4, 20], strict=True):
        assert (labels[train] == category).sum() == round(0.75 * n)
    again = neural_fit.category_split(labels, seed=1)
    other = neural_fit.category_split(labels, seed=2)
    assert np.array_equal(train, again[0]) and not np.array_equal(train, other[0])


def test_pearson_per_site_matches_numpy():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(30, 5)), rng.normal(size=(30, 5))
    b[:, 0] += 2 * a[:, 0]
    expected = [np.corrcoef(a[:, j], b[:, j])[0, 1] for j in range(5)]
    np.testing.assert_allclose(neural_fit.pearson_per_site(a, b), expected, rtol=1e-12)


def test_linear_map_of_features_is_recovered_and_noise_is_not(run_dir, images):
    x, labels = images
    model = load_trained_model(run_dir)
    features = neural_fit.layer_features(model, "2", x)  # the hidden ReLU's output
    assert features.shape == (240, 24)
    rng = np.random.default_rng(0)
    responses = features @ rng.normal(size=(24, 40)) + 0.1 * features.std() * rng.normal(size=(240, 40))
    fitted = neural_fit.fit(features, responses, labels, n_components=10)
    assert fitted.median_r > 0.9 and fitted.n_test == 240 - fitted.n_train
    noise = neural_fit.fit(features, rng.normal(size=(240, 40)), labels, n_components=10)
    assert abs(noise.median_r) < 0.15


def test_noise_ceiling_correction_lifts_a_perfect_predictor_to_about_one():
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(8), 40)
    features = rng.normal(size=(320, 6))
    signal = features @ rng.normal(size=(6, 30))
    trials = signal[None] + 10.0 * rng.normal(size=(20, 320, 30))  # reliability of the mean ~ 6 / 11
    result = neural_fit.fit(features, trials.mean(0), labels, trials=trials, n_components=6)
    assert result.median_r < 0.85
    assert result.median_corrected_r == pytest.approx(1.0, abs=0.08)
    # the reliability is the Spearman-Brown corrected split half: by hand for one split
    reliability = neural_fit.split_half_reliability(trials[:, :50], splits=1, seed=0)
    order = np.random.default_rng(0).permutation(20)
    first, second = trials[order[:10], :50].mean(0), trials[order[10:], :50].mean(0)
    half = [np.corrcoef(first[:, j], second[:, j])[0, 1] for j in range(30)]
    np.testing.assert_allclose(reliability, [2 * h / (1 + h) for h in half], rtol=1e-10)


def write_npz(path, x, labels, responses, **extra):
    np.savez(path, images=x, responses=responses, labels=labels, **extra)
    return path


def test_cli_reports_median_and_writes_json(run_dir, images, tmp_path, capsys):
    x, labels = images
    features = neural_fit.layer_features(load_trained_model(run_dir), "2", x)
    rng = np.random.default_rng(2)
    responses = features @ rng.normal(size=(24, 12))
    trials = responses[None] + 0.5 * rng.normal(size=(6, 240, 12))
    data = write_npz(tmp_path / "neural.npz", x, labels, trials.mean(0), trials=trials)
    out = tmp_path / "fit.json"
    assert (
        main(["neural-fit", str(run_dir), "--layer", "2", "--data", str(data), "--components", "8", "--json", str(out)])
        == 0
    )
    printed = capsys.readouterr().out
    assert "median held-out Pearson r" in printed and "median noise-corrected r" in printed
    record = json.loads(out.read_text())
    assert record["n_sites"] == 12 and len(record["r"]) == 12 and record["median_r"] > 0.8


def test_cli_bad_inputs_are_one_line_errors(run_dir, images, tmp_path, capsys):
    x, labels = images
    good = write_npz(tmp_path / "good.npz", x, labels, np.zeros((240, 3)))
    np.savez(tmp_path / "nolabels.npz", images=x, responses=np.zeros((240, 3)))
    bad_shape = write_npz(tmp_path / "shape.npz", x, labels, np.zeros((200, 3)))
    cases = [
        ([str(run_dir), "--layer", "2", "--data", str(tmp_path / "nolabels.npz")], "lacks labels"),
        ([str(run_dir), "--layer", "2", "--data", str(bad_shape)], "responses must be [n_images=240"),
        ([str(run_dir), "--layer", "22", "--data", str(good)], "no layer '22'"),
        ([str(tmp_path), "--layer", "2", "--data", str(good)], "is not a trained run folder"),
        ([str(run_dir), "--layer", "2", "--data", str(tmp_path / "missing.npz")], "does not exist"),
        ([str(run_dir), "--layer", "2", "--data", str(good), "--json", str(good)], "--json"),
        (
            [str(run_dir), "--layer", "2", "--data", str(good), "--json", str(tmp_path / "no" / "f.json")],
            "does not exist",
        ),
    ]
    for args, message in cases:
        assert main(["neural-fit", *args]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert np.load(good)["responses"].shape == (240, 3)  # the refused --json target is untouched


def test_a_damaged_checkpoint_falls_back_to_the_previous_one(run_dir, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    shutil.copyfile(copy / "checkpoint.pt", copy / "checkpoint.prev.pt")
    (copy / "checkpoint.pt").write_bytes(b"cut short")
    model = load_trained_model(copy)
    for name, value in load_trained_model(run_dir).state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], value)
    err = capsys.readouterr().err
    assert "checkpoint.pt is damaged" in err and "using the previous one" in err
