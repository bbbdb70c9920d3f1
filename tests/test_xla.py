"""The xla backend on torch-xla's CPU device (PJRT_DEVICE=CPU), in the xla environment.

`make test` runs these in their own pytest process there (``-m xla``; the main suite deselects
them, its torch has no torch-xla). tests/conftest.py creates the XLA device before any backward
of the process: a backward on the CPU first breaks every later XLA backward (an autograd
``device_ready_queues_`` assert in torch-xla 2.9).
"""

import json

import pytest
import torch
from tiny_runs import TINY_CONVNET

from neural_alignment.cli import main
from neural_alignment.recipes.loader import load_recipe
from neural_alignment.runtime import checkpoint
from neural_alignment.training.trainer import Trainer, train

pytestmark = pytest.mark.xla

# a small convnet with BatchNorm on 8x8 digits; 6 steps, every one logged (the test set is evaluated after the last)
TINY = [*TINY_CONVNET, "data.train_limit=256", "data.test_limit=64", "train.metrics_every=1"]
RULES = ["bp", "fa", "sa", "aa", "kp", "wm"]


def recipe(rule, *overrides):
    return load_recipe("digits-mlp", [*TINY, f"rule.name={rule}", *overrides])


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("rule", RULES)
def test_xla_trains_like_the_cpu_and_compiles_a_fixed_set_of_graphs(tmp_path, rule):
    """Losses, weights and B after 6 steps equal the cpu backend's to float32 tolerance; the XLA
    compilation count stops growing after step 3 (step 6 adds the evaluation's graphs) and
    summary.json records it."""
    compilations = {}
    xla = Trainer(
        recipe(rule, "backend.name=xla"),
        tmp_path / "xla",
        on_step=lambda t, step: compilations.__setitem__(step, t.backend.summary()["xla_compilations"]),
    )
    assert next(xla.model.parameters()).device.type == "xla"
    xla_result = xla.run()
    cpu_result = train(recipe(rule), tmp_path / "cpu")
    got, want = records(tmp_path / "xla"), records(tmp_path / "cpu")
    assert [r["step"] for r in got] == [r["step"] for r in want] == [0, 1, 2, 3, 4, 5, 6]  # step 0: the initial weights
    for a, b in zip(got, want, strict=True):
        assert a.get("loss", 0.0) == pytest.approx(b.get("loss", 0.0), abs=5e-6)
        assert a["mean_weight_angle"] == pytest.approx(b["mean_weight_angle"], abs=1e-3)
    cpu_state = cpu_result.model.state_dict()
    parameters = dict(xla_result.model.named_parameters())
    for name, value in xla_result.model.state_dict().items():
        # BatchNorm's running variance: XLA's float32 batch variance differs in the 4th digit
        rtol = 1e-4 if name in parameters else 1e-3
        assert torch.allclose(value.cpu(), cpu_state[name], atol=5e-5, rtol=rtol), name
    assert compilations[3] == compilations[4] == compilations[5] > 0
    assert json.loads((tmp_path / "xla" / "summary.json").read_text())["xla_compilations"] >= compilations[5]


def test_checkpoint_written_on_xla_resumes_on_the_cpu(tmp_path):
    """`nalign run ... backend.name=xla` (3 steps, CPU tensors in the checkpoint), resumed with the
    cpu backend to 6 steps, ends where an uninterrupted cpu run does."""
    run_dir = tmp_path / "run"
    assert (
        main(["run", "digits-mlp", *TINY, "rule.name=kp", "train.steps=3", "backend.name=xla", "--out", str(run_dir)])
        == 0
    )
    assert json.loads((run_dir / "summary.json").read_text())["xla_compilations"] > 0
    state = checkpoint.load(run_dir / "checkpoint.pt", map_location=None)
    assert all(v.device.type == "cpu" for v in state["model"].values())
    resumed = train(recipe("kp"), run_dir, resume=True)
    uninterrupted = train(recipe("kp"), tmp_path / "cpu")
    expected = uninterrupted.model.state_dict()
    for name, value in resumed.model.state_dict().items():
        assert torch.allclose(value, expected[name], atol=5e-5, rtol=1e-3), name
