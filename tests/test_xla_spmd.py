"""The xla backend's SPMD mode on 4 virtual PJRT CPU devices, and the XLA RNG in checkpoints.

The device count is fixed when torch-xla starts, so the SPMD runs happen in one subprocess
(``CPU_NUM_DEVICES=4``, ``backend.options.spmd=true``) started once for the module; this process
(one XLA device, created by tests/conftest.py) trains the cpu references and the resumes.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from tiny_runs import TINY_CONVNET

from neural_alignment.recipes.loader import load_recipe
from neural_alignment.training.trainer import Trainer, train

pytestmark = pytest.mark.xla

RULES = ["bp", "fa", "wm", "ia", "sa", "aa", "kp"]
DEVICES = 4
# a small convnet with BatchNorm on 8x8 digits, global batch 32 (8 per device); logging, evaluation
# (probes, snapshots) and checkpoints in the middle of the run, not only at its end
TINY = [
    *TINY_CONVNET,
    "data.train_limit=256",
    "data.test_limit=64",
    "train.metrics_every=2",
    "train.eval_every=3",
    "train.checkpoint_every=4",
]
SPMD = ["backend.name=xla", "backend.options.spmd=true"]

SCRIPT = """
import json, sys
from pathlib import Path
import torch, torch_xla.debug.metrics as met
from neural_alignment.recipes.loader import load_recipe
from neural_alignment.runtime.backend import to_cpu
from neural_alignment.training.trainer import Trainer

out, tiny, spmd, rules = Path(sys.argv[1]), *(json.loads(a) for a in sys.argv[2:])
compiled = lambda: met.metric_data("CompileTime")[0] if met.metric_data("CompileTime") else 0
recipe = lambda *o: load_recipe("digits-mlp", [*tiny, *spmd, *o])
compilations = {}
for rule, steps in [*((r, 6) for r in rules), ("sa", 12)]:
    before = compiled()
    result = Trainer(recipe(f"rule.name={rule}", f"train.steps={steps}"), out / f"{rule}-{steps}").run()
    compilations[f"{rule}-{steps}"] = compiled() - before
    torch.save(to_cpu(result.model.state_dict()), out / f"{rule}-{steps}" / "final.pt")
(out / "compilations.json").write_text(json.dumps(compilations))
Trainer(recipe("rule.name=kp", "train.steps=2"), out / "checkpoint").run()
from neural_alignment.core.errors import UserError
try:
    Trainer(recipe("data.batch_size=30", "train.steps=1"), out / "uneven")
except UserError as error:
    (out / "uneven.txt").write_text(str(error))
"""


def recipe(*overrides):
    return load_recipe("digits-mlp", [*TINY, *overrides])


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_same_state(got: dict, want: dict, parameters: set) -> None:
    for name, value in got.items():
        # BatchNorm's running variance: XLA's float32 batch variance differs in the 4th digit
        rtol = 1e-4 if name in parameters else 1e-3
        assert torch.allclose(value.cpu(), want[name], atol=5e-5, rtol=rtol), name


@pytest.fixture(scope="module")
def spmd(tmp_path_factory):
    """The folder the 4-device SPMD subprocess wrote: a run per rule, the budget runs, a checkpoint."""
    out = tmp_path_factory.mktemp("spmd")
    env = {**os.environ, "PJRT_DEVICE": "CPU", "CPU_NUM_DEVICES": str(DEVICES)}
    args = [json.dumps(a) for a in (TINY, SPMD, RULES)]
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(out), *args], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.mark.parametrize("rule", RULES)
def test_spmd_on_4_devices_trains_like_the_cpu(spmd, tmp_path, rule):
    """Each global batch sharded over 4 devices: the losses, W, B and BatchNorm's statistics equal
    the cpu backend's on the same global batches (BatchNorm and the batch means see all of it)."""
    cpu = train(recipe(f"rule.name={rule}"), tmp_path / "cpu")
    got, want = records(spmd / f"{rule}-6"), records(tmp_path / "cpu")
    assert [r["step"] for r in got] == [r["step"] for r in want] == [0, 2, 3, 4, 6]  # step 0: the initial weights
    for a, b in zip(got, want, strict=True):
        assert a.get("loss", 0.0) == pytest.approx(b.get("loss", 0.0), abs=5e-6)
        assert a["mean_weight_angle"] == pytest.approx(b["mean_weight_angle"], abs=1e-3)
    # the last record: evaluation too (eval-mode BatchNorm reads the running variance, float32 to ~1e-5)
    assert a["test_loss"] == pytest.approx(b["test_loss"], rel=2e-5)
    assert json.loads((spmd / f"{rule}-6" / "summary.json").read_text())["xla_devices"] == DEVICES
    parameters = {name for name, _ in cpu.model.named_parameters()}
    assert_same_state(torch.load(spmd / f"{rule}-6" / "final.pt"), cpu.model.state_dict(), parameters)


def test_spmd_compiles_the_same_graphs_for_6_and_12_steps(spmd):
    """With logging, evaluation and checkpoints in mid-run, each rule's 6-step run compiles at most
    the twelve graphs docs/scaling.md lists, and a 12-step run after it compiles none."""
    compilations = json.loads((spmd / "compilations.json").read_text())
    assert all(0 < compilations[f"{rule}-6"] <= 12 for rule in RULES), compilations
    assert compilations["sa-12"] == 0


def test_a_batch_the_devices_do_not_divide_is_a_user_error(spmd):
    assert (spmd / "uneven.txt").read_text() == (
        "backend 'xla' option spmd=true shards each micro-batch over 4 devices: "
        "train.accumulate=1 times 4 must divide data.batch_size=30"
    )


@pytest.mark.parametrize("backend", ["xla", "cpu"])
def test_checkpoint_written_under_spmd_resumes_on_one_device(spmd, tmp_path, backend):
    """2 steps on 4 devices, resumed on 1 XLA device or on the cpu to 6: the uninterrupted cpu run's weights."""
    run_dir = tmp_path / "run"
    shutil.copytree(spmd / "checkpoint", run_dir)
    resumed = train(recipe("rule.name=kp", f"backend.name={backend}"), run_dir, resume=True)
    if backend == "xla":
        assert json.loads((run_dir / "summary.json").read_text())["xla_devices"] == 1
    uninterrupted = train(recipe("rule.name=kp"), tmp_path / "cpu")
    parameters = {name for name, _ in uninterrupted.model.named_parameters()}
    assert_same_state(resumed.model.state_dict(), uninterrupted.model.state_dict(), parameters)


def test_resumed_xla_run_draws_the_uninterrupted_runs_input_noise(tmp_path):
    """ia with input noise (drawn by the XLA device's RNG): 3 steps, then a resume to 6, equals 6
    steps in one go (the device RNG is seeded per step: its stream does not depend on the syncs
    between steps, such as the first part's final evaluation)."""
    noisy = ["rule.name=ia", "rule.noise_std=1.0", "backend.name=xla", "train.steps=6"]
    uninterrupted = Trainer(recipe(*noisy), tmp_path / "whole").run().model.state_dict()
    Trainer(recipe(*noisy[:-1], "train.steps=3"), tmp_path / "resumed").run()
    resumed = Trainer(recipe(*noisy), tmp_path / "resumed", resume=True).run().model.state_dict()
    for name, value in resumed.items():
        assert torch.equal(value.cpu(), uninterrupted[name].cpu()), name
