"""The ddp backend in real torch.distributed processes (gloo on the CPU).

Two processes on the same global batch train like one process (every global batch is split
between them and DDP averages the gradients of W and of B), the run folder is written by rank 0
alone, and a checkpoint written by two processes resumes in one to the weights of an
uninterrupted run. float64 makes the comparisons exact up to the order of the sums.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_runs import SGD_MOMENTUM, TINY_MLP

from neural_alignment.cli import main
from neural_alignment.core.errors import UserError
from neural_alignment.recipes.loader import load_recipe
from neural_alignment.runtime import checkpoint
from neural_alignment.runtime.snapshots import snapshot_steps
from neural_alignment.training.trainer import train

TINY = [
    *TINY_MLP,
    *SGD_MOMENTUM,
    "data.train_limit=256",
    "data.test_limit=64",
    "train.dtype=float64",
    "train.steps=6",
    "train.eval_every=3",
]
RULES = ["bp", "sa", "aa", "kp"]
# name: (rule and overrides, overrides only the ddp run takes)
VARIANTS = {
    "kp-accumulate": (("kp", "train.accumulate=2"), ()),  # DDP averages once per step (no_sync before)
    "wm-global-means": (("wm",), ("backend.options={sync_alignment_means: true}",)),  # BI/FO BWMC
    "ia-global-means": (("ia",), ("backend.options={sync_alignment_means: true}",)),  # fr of the centred fp
}
HERE = Path(__file__).resolve().parent


def recipe(rule, *overrides):
    return load_recipe("digits-mlp", [*TINY, f"rule.name={rule}", *overrides])


def variant(name, ddp=False):
    """A rule name or a VARIANTS name; ``ddp``: on the ddp backend, with the variant's ddp options."""
    (rule, *extra), ddp_only = VARIANTS.get(name, ((name,), ()))
    return recipe(rule, *extra, *(("backend.name=ddp", *ddp_only) if ddp else ()))


def environment():
    """The child processes' environment: this checkout importable, one thread each."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE.parent), env.get("PYTHONPATH")]))
    return env


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def weights(run_dir):
    return checkpoint.load(run_dir / "checkpoint.pt")["model"]


def assert_same_weights(a, b, tol):
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], rtol=0, atol=tol), (name, (a[name] - b[name]).abs().max())


def test_two_processes_train_like_one_on_the_global_batch(tmp_path):
    """bp, sa, aa, kp (and kp with 2 micro-batches, wm and ia with the alignment pass's batch
    means over both processes): W, biases and B after 6 steps equal the one-process run's, and so do the
    logged losses (sums all-reduced) and the test metrics (each process evaluates half)."""
    names = [*RULES, *VARIANTS]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node=2",
            str(HERE / "ddp_worker.py"),
            str(tmp_path / "ddp"),
            *names,
        ],
        check=True,
        env=environment(),
        timeout=600,
    )
    for name in names:
        single = train(variant(name), tmp_path / "one" / name)
        state = weights(tmp_path / "ddp" / name)
        assert any(key.endswith("backward_weight") for key in state) == (name != "bp")
        assert_same_weights(state, single.model.state_dict(), tol=1e-12)
        logged, expected = records(tmp_path / "ddp" / name), records(tmp_path / "one" / name)
        assert [r["step"] for r in logged] == list(range(7))  # rank 0 alone logs, from step 0 (no loss yet)
        assert logged[0] == expected[0]
        for got, want in zip(logged[1:], expected[1:], strict=True):
            assert got["loss"] == pytest.approx(want["loss"], rel=1e-6)  # running sums are float32
            assert got["train_acc"] == want["train_acc"]
        assert logged[3]["test_loss"] == pytest.approx(expected[3]["test_loss"], rel=1e-6)  # float32 logits
        assert logged[3]["test_acc"] == expected[3]["test_acc"]


def test_nalign_run_launches_ddp_and_a_checkpoint_resumes_in_one_process(tmp_path):
    """`nalign run ... backend.name=ddp backend.options.nproc_per_node=2` from a plain process starts
    two processes itself; rank 0 alone writes the run folder; its checkpoint (step 3) resumes in one
    process to the weights of an uninterrupted one-process run of 6 steps."""
    run_dir = tmp_path / "run"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "neural_alignment.cli",
            "run",
            "digits-mlp",
            *TINY,
            "rule.name=kp",
            "train.steps=3",
            "backend.name=ddp",
            "backend.options.nproc_per_node=2",
            "--out",
            str(run_dir),
        ],
        check=True,
        env=environment(),
        timeout=600,
    )
    written = sorted(p.name for p in run_dir.iterdir())
    assert written == ["checkpoint.pt", "metrics.jsonl", "recipe.yaml", "summary.json", "weights"]
    assert snapshot_steps(run_dir) == [0, 3]  # rank 0's snapshots: at the start and the final evaluation
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 3
    resumed = train(recipe("kp"), run_dir, resume=True)
    uninterrupted = train(recipe("kp"), tmp_path / "uninterrupted")
    assert_same_weights(resumed.model.state_dict(), uninterrupted.model.state_dict(), tol=1e-12)
    assert [r["step"] for r in records(run_dir)] == list(range(7))


def test_ddp_mistakes_are_user_errors(tmp_path, capsys):
    assert main(["run", "digits-mlp", *TINY, "backend.name=ddp", "backend.options.nproc=2"]) == 2
    assert "unknown option 'nproc' for backend 'ddp'" in capsys.readouterr().err
    with pytest.raises(UserError, match="LOCAL_RANK is not set"):  # the Python API does not launch
        train(recipe("bp", "backend.name=ddp"), tmp_path / "r")


@pytest.mark.parametrize(
    "option, message",
    [
        ("nproc_per_node=two", "backend 'ddp' option nproc_per_node='two': 'two' is not an integer"),
        ("nproc_per_node=2.5", "backend 'ddp' option nproc_per_node=2.5: 2.5 is not an integer"),
        ("nproc_per_node=0", "backend 'ddp' option nproc_per_node=0: 0 is out of range; valid: >= 1"),
        ("device=tpu", "backend 'ddp' option device='tpu': 'tpu' is not one of cpu, cuda"),
        ("sync_batchnorm=maybe", "backend 'ddp' option sync_batchnorm='maybe': 'maybe' is not true or false"),
        ("compile=3", "backend 'ddp' option compile=3: 3 is not true or false or a string"),
    ],
)
def test_every_ddp_option_is_checked_in_one_line_before_a_process_starts(capsys, option, message):
    assert main(["run", "digits-mlp", *TINY, "backend.name=ddp", f"backend.options.{option}"]) == 2
    assert capsys.readouterr().err == f"nalign: error: {message}\n"


def test_more_cpu_processes_than_cores_are_refused_unless_oversubscribed(tmp_path, capsys):
    cores = len(os.sched_getaffinity(0))
    many = ["backend.name=ddp", f"backend.options.nproc_per_node={cores + 1}", "--out", str(tmp_path / "r")]
    assert main(["run", "digits-mlp", *TINY, *many]) == 2
    assert capsys.readouterr().err == (
        f"nalign: error: backend 'ddp' option nproc_per_node={cores + 1} exceeds the {cores} CPU cores here (each "
        f"process holds a whole copy of the run); use at most {cores}, or set backend.options.oversubscribe=true "
        "to start them anyway\n"
    )
    assert not (tmp_path / "r").exists()  # nothing started, nothing written
