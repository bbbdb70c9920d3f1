"""Atomic checkpoints loadable with weights_only=True, and RNG state round trips."""

import pickle
import random

import numpy as np
import pytest
import torch

from neural_alignment.runtime import checkpoint


def test_save_load_round_trip_with_weights_only(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    state = {
        "step": 7,
        "model": model.state_dict(),
        "optim": opt.state_dict(),
        "rng": checkpoint.rng_state(),
        "recipe": "name: x\n",
    }
    path = checkpoint.save(state, tmp_path / "sub" / "ck.pt")
    loaded = torch.load(path, weights_only=True)  # raises on anything but tensors and plain types
    assert loaded["step"] == 7 and loaded["recipe"] == "name: x\n"
    assert all(torch.equal(loaded["model"][k], v) for k, v in model.state_dict().items())
    fresh = torch.optim.Adam(torch.nn.Linear(3, 2).parameters(), lr=0.1)
    fresh.load_state_dict(checkpoint.load(path)["optim"])
    assert torch.equal(fresh.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert [p.name for p in path.parent.iterdir()] == ["ck.pt"]  # no temporary file left


def test_failed_save_keeps_the_previous_file(tmp_path):
    path = tmp_path / "ck.pt"
    checkpoint.save({"step": 1}, path)
    with pytest.raises((AttributeError, pickle.PicklingError)):  # which one depends on the Python version
        checkpoint.save({"step": 2, "bad": lambda: None}, path)  # a lambda cannot be pickled
    assert checkpoint.load(path) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]


def draws():
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)], random.gauss(0, 1)


def test_rng_state_round_trip_through_a_file(tmp_path):
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    random.gauss(0, 1)  # leaves a cached gaussian in Python's state
    np.random.standard_normal()
    path = checkpoint.save({"rng": checkpoint.rng_state()}, tmp_path / "rng.pt")
    first = draws()
    checkpoint.set_rng_state(checkpoint.load(path)["rng"])
    assert draws() == first


def test_the_replaced_checkpoint_is_kept_as_the_previous_one(tmp_path):
    path = tmp_path / "ck.pt"
    for step in (1, 2, 3):
        checkpoint.save({"step": step}, path)
    assert checkpoint.load(path) == {"step": 3}
    assert checkpoint.load(checkpoint.previous_path(path)) == {"step": 2}
    assert checkpoint.previous_path(path).name == "ck.prev.pt" and not checkpoint.temporary_files(path)


def test_load_good_names_a_damaged_checkpoint_and_falls_back(tmp_path):
    from neural_alignment.core.errors import UserError

    path = tmp_path / "ck.pt"
    checkpoint.save({"step": 1}, path)
    checkpoint.save({"step": 2}, path)
    assert checkpoint.load_good(path) == ({"step": 2}, None)
    path.write_bytes(path.read_bytes()[:10])
    state, notice = checkpoint.load_good(path)
    assert state == {"step": 1} and f"checkpoint {path} is damaged" in notice and "ck.prev.pt (step 1)" in notice
    checkpoint.previous_path(path).write_bytes(b"\x00" * 8)
    with pytest.raises(UserError, match=r"ck\.pt is damaged .* no good previous one"):
        checkpoint.load_good(path)
