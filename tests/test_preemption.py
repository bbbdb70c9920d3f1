"""Preemption and lost processes, with real signals and real processes (issue 15 item 5, issue 18).

SIGTERM (how TPU VMs and spot GPUs are preempted) and SIGINT (Ctrl-C) stop a run after the
step it reached with a checkpoint at that step, ``summary.json`` saying ``interrupted``, one
line from nalign and exit code 128 + the signal; ``--resume`` then ends bit-identical to an
uninterrupted run: on the cpu backend and in a 2-process ddp run (gloo), where every process
stops after the same step. A ddp process killed with SIGKILL: the others stop, and nalign
says in one line which rank died and how to resume, its last checkpoint intact.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tiny_runs import SGD_MOMENTUM, TINY_MLP

from neural_alignment.cli import main
from neural_alignment.recipes.loader import load_recipe
from neural_alignment.runtime import checkpoint
from neural_alignment.training.preemption import Interrupted
from neural_alignment.training.trainer import Trainer, train

HERE = Path(__file__).resolve().parent
TINY = [
    *TINY_MLP,
    *SGD_MOMENTUM,
    "data.train_limit=256",
    "data.test_limit=64",
    "train.eval_every=0",
    "train.dtype=float64",
    "rule.name=kp",
]
LONG = 200  # steps: the signal arrives long before the end (it is sent once the first record is written)
DDP = ["backend.name=ddp", "backend.options.nproc_per_node=2"]


def environment():
    """This checkout importable; the threads of this process (an in-process run is compared bit for bit)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE.parent), env.get("PYTHONPATH")]))
    return env


def start(run_dir, *overrides, steps=LONG):
    """``nalign run digits-mlp ... --out run_dir`` as a real process."""
    command = ["run", "digits-mlp", *TINY, f"train.steps={steps}", *overrides, "--out", str(run_dir)]
    return subprocess.Popen(
        [sys.executable, "-m", "neural_alignment.cli", *command],
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_training(run_dir, process, what="metrics.jsonl"):
    """Until ``run_dir/what`` holds data and, for ``metrics.jsonl``, a record past step 0 (the record
    of step 0 is written before the first step: a signal then could stop a run with nothing trained)."""
    deadline = time.monotonic() + 120
    while not _written(run_dir / what):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.02)


def _written(path):
    if not (path.is_file() and path.stat().st_size):
        return False
    if path.name != "metrics.jsonl":
        return True
    lines = path.read_text().splitlines()
    return len(lines) > 1 and lines[-1].endswith("}")  # a whole record after step 0's


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def summary(run_dir):
    return json.loads((run_dir / "summary.json").read_text())


def nalign_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("nalign")]


def assert_stopped_at_its_step(run_dir, signame, steps=LONG):
    """The checkpoint is at the step the run reached: the step of its last record and of its summary."""
    stopped = summary(run_dir)
    step = checkpoint.load(run_dir / "checkpoint.pt")["step"]
    assert (stopped["status"], stopped["signal"]) == ("interrupted", signame)
    assert 0 < step == stopped["steps"] == records(run_dir)[-1]["step"] < steps
    return step


def assert_bit_identical(a, b):
    assert a.keys() == b.keys()
    assert all(torch.equal(a[key], b[key]) for key in a), [key for key in a if not torch.equal(a[key], b[key])]


def test_sigterm_checkpoints_the_step_reached_and_resume_ends_bit_identical(tmp_path, capsys):
    run_dir = tmp_path / "run"
    process = start(run_dir)
    wait_for_training(run_dir, process)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM
    step = assert_stopped_at_its_step(run_dir, "SIGTERM")
    assert nalign_lines(err) == [
        f"nalign: interrupted by SIGTERM at step {step} of {LONG}; checkpoint {run_dir / 'checkpoint.pt'} "
        f"written; continue with: nalign run --resume {run_dir}"
    ]
    assert "Traceback" not in err
    assert main(["run", "--resume", str(run_dir)]) == 0
    whole = train(load_recipe("digits-mlp", [*TINY, f"train.steps={LONG}"]), tmp_path / "whole")
    assert_bit_identical(checkpoint.load(run_dir / "checkpoint.pt")["model"], whole.model.state_dict())
    assert [r["step"] for r in records(run_dir)] == list(range(LONG + 1))
    assert summary(run_dir)["status"] == "finished"


def test_ctrl_c_checkpoints_the_step_reached_and_resume_ends_bit_identical(tmp_path):
    """A real SIGINT to this process at step 5 (input noise and Adam: the RNG and optimizer states count)."""
    r = load_recipe("digits-mlp", [*TINY, "train.steps=12", "rule.noise_std=0.5", "optim.alignment.name=adam"])

    def ctrl_c(trainer, step):
        if step == 5:
            os.kill(os.getpid(), signal.SIGINT)

    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(Interrupted) as stopped:
        Trainer(r, tmp_path / "run", on_step=ctrl_c).run()
    assert signal.getsignal(signal.SIGINT) is handler  # the trainer's handler is gone again
    assert stopped.value.exit_code == 130 and "interrupted by SIGINT at step 5 of 12" in stopped.value.report
    assert assert_stopped_at_its_step(tmp_path / "run", "SIGINT", steps=12) == 5
    resumed = train(r, tmp_path / "run", resume=True).model.state_dict()
    assert_bit_identical(resumed, train(r, tmp_path / "whole").model.state_dict())


def child_with_rank(parent_pid, rank):
    """The pid of the process ``parent_pid`` started with ``RANK=rank`` (a ddp worker)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError):
            continue
        if ppid == parent_pid and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    raise AssertionError(f"no rank {rank} under {parent_pid}")


def test_ddp_sigterm_stops_every_process_at_one_step_and_a_killed_rank_is_named(tmp_path):
    """Three real 2-process gloo runs side by side: uninterrupted; SIGTERM to the launcher (each
    process checkpoints after the same step, then --resume in 2 processes ends bit-identical);
    SIGKILL to rank 1 (rank 0 stops at once; one nalign line names rank 1; its checkpoint loads)."""
    whole, stopped, killed = (tmp_path / name for name in ("whole", "stopped", "killed"))
    runs = {
        whole: start(whole, *DDP),
        stopped: start(stopped, *DDP),
        killed: start(killed, *DDP, "train.checkpoint_every=20"),
    }
    wait_for_training(stopped, runs[stopped])
    runs[stopped].send_signal(signal.SIGTERM)
    wait_for_training(killed, runs[killed], "checkpoint.pt")
    os.kill(child_with_rank(runs[killed].pid, 1), signal.SIGKILL)
    results = {run_dir: process.communicate(timeout=300) for run_dir, process in runs.items()}

    assert runs[whole].returncode == 0, results[whole][1]
    assert runs[stopped].returncode == 128 + signal.SIGTERM
    step = assert_stopped_at_its_step(stopped, "SIGTERM")
    assert nalign_lines(results[stopped][1]) == [  # rank 0's line alone, no launcher noise
        f"nalign: interrupted by SIGTERM at step {step} of {LONG}; checkpoint {stopped / 'checkpoint.pt'} "
        f"written; continue with: nalign run --resume {stopped}"
    ]
    resume = subprocess.run(
        [sys.executable, "-m", "neural_alignment.cli", "run", "--resume", str(stopped)],
        env=environment(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resume.returncode == 0, resume.stderr
    assert_bit_identical(
        checkpoint.load(stopped / "checkpoint.pt")["model"], checkpoint.load(whole / "checkpoint.pt")["model"]
    )
    assert [r["step"] for r in records(stopped)] == list(range(LONG + 1))

    err = results[killed][1]
    assert runs[killed].returncode == 128 + signal.SIGKILL
    assert nalign_lines(err) == [
        "nalign: error: rank 1 (SIGKILL) of the 2 processes of this ddp run died; the others stopped; "
        f"continue with: nalign run --resume {killed}"
    ]
    assert "Traceback" not in err and "gloo" not in err
    kept = checkpoint.load(killed / "checkpoint.pt")["step"]
    assert kept > 0 and kept % 20 == 0  # the last periodic checkpoint, intact
