"""A run folder belongs to one run (issue 9): refused when it holds another run, locked while a
run lives, resumed with its own recipe, cut back atomically, a damaged checkpoint falls back to
the previous one, and a bad ``--out`` is one line. Every run here is a few digits steps."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import yaml
from tiny_runs import DIGITS_MLP_FEW as TINY

from neural_alignment.cli import main
from neural_alignment.runtime import checkpoint
from neural_alignment.training import rundir


def run(capsys, *args):
    """``nalign run ARGS``: (exit code, stderr lines)."""
    code = main(["run", *args])
    return code, capsys.readouterr().err.strip().splitlines()


def steps(folder):
    return [json.loads(line)["step"] for line in (folder / "metrics.jsonl").read_text().splitlines()]


def snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_a_second_run_into_a_used_folder_is_refused_unless_overwrite(tmp_path, capsys):
    out = tmp_path / "R"
    assert run(capsys, "digits-mlp", *TINY, "train.steps=3", "--out", str(out))[0] == 0
    before = snapshot(out)
    code, err = run(capsys, "digits-mlp", *TINY, "train.steps=4", "train.seed=7", "--out", str(out))
    assert code == 2 and len(err) == 1
    assert str(out) in err[0] and "not empty" in err[0] and "--resume" in err[0] and "--overwrite" in err[0]
    assert snapshot(out) == before  # nothing of the first run was touched
    assert run(capsys, "digits-mlp", *TINY, "train.steps=4", "train.seed=7", "--out", str(out), "--overwrite")[0] == 0
    assert steps(out) == [0, 1, 2, 3, 4]  # the second run's record alone
    assert yaml.safe_load((out / "recipe.yaml").read_text())["train"]["seed"] == 7


def test_a_folder_held_by_a_live_run_is_refused_and_a_killed_run_leaves_no_lock(tmp_path, capsys):
    out = tmp_path / "C"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
        import time
        from neural_alignment.training.rundir import RunFolder
        held = RunFolder({str(out)!r})
        held.claim(resume=False)
        print("held", flush=True)
        time.sleep(60)
    """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        code, err = run(capsys, "digits-mlp", *TINY, "train.steps=2", "--out", str(out))
        assert code == 2 and len(err) == 1 and "in use by another run" in err[0] and str(out) in err[0]
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # kill -9: the kernel drops the lock
        holder.wait()
    assert run(capsys, "digits-mlp", *TINY, "train.steps=2", "--out", str(out))[0] == 0


def test_resume_continues_the_folders_recipe_and_records_what_changed(tmp_path, capsys):
    out = tmp_path / "ia"
    first = ["digits-mlp", *TINY, "rule.name=fa", "train.steps=4", "train.checkpoint_every=2"]
    assert run(capsys, *first, "--out", str(out))[0] == 0
    # the README's form: the recipe name and --resume, no overrides (the folder's rule is fa, not the default)
    assert run(capsys, "digits-mlp", "--resume", str(out))[0] == 0
    assert run(capsys, "--resume", str(out), "train.steps=6", "train.metrics_every=2")[0] == 0  # no NAME needed
    recipe = yaml.safe_load((out / "recipe.yaml").read_text())
    assert recipe["rule"]["name"] == "fa" and recipe["train"]["steps"] == 6
    assert recipe["resumed"] == [
        {"step": 4, "changed": {"train.metrics_every": {"from": 1, "to": 2}, "train.steps": {"from": 4, "to": 6}}}
    ]
    assert checkpoint.load(out / "checkpoint.pt")["step"] == 6 and steps(out) == [0, 1, 2, 3, 4, 6]


@pytest.mark.parametrize(
    "override, named",
    [
        ("rule.name=kp", "rule.name ('fa' -> 'kp')"),
        ("optim.task.lr=0.5", "optim.task.lr (0.05 -> 0.5): a resumed run keeps its recipe"),
        ("log.loggers=[nosuchlogger]", "unknown logger 'nosuchlogger'"),
        ("train.steps=1", "its checkpoint is at step 2"),
    ],
)
def test_resume_refuses_unsafe_or_bad_changes_before_writing_anything(tmp_path, capsys, override, named):
    out = tmp_path / "r"
    assert run(capsys, "digits-mlp", *TINY, "rule.name=fa", "train.steps=2", "--out", str(out))[0] == 0
    before = snapshot(out)
    code, err = run(capsys, "--resume", str(out), override)
    assert code == 2 and len(err) == 1 and named in err[0]
    assert snapshot(out) == before


def test_resume_with_another_recipes_name_is_refused(tmp_path, capsys):
    out = tmp_path / "r"
    assert run(capsys, "digits-mlp", *TINY, "train.steps=2", "--out", str(out))[0] == 0
    code, err = run(capsys, "fmnist-mlp", "--resume", str(out))
    assert code == 2 and len(err) == 1 and "holds a run of recipe 'digits-mlp'" in err[0]


def test_the_metrics_cut_back_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    text = "".join(json.dumps({"step": s}) + "\n" for s in (1, 2, 3)) + '{"step": 4, "lo'
    path.write_text(text)

    def killed(*args):
        raise KeyboardInterrupt  # a kill between writing the cut record and putting it in place

    with monkeypatch.context() as patch:
        patch.setattr(rundir.os, "replace", killed)
        with pytest.raises(KeyboardInterrupt):
            rundir.drop_records_after(path, 2)
    assert path.read_text() == text and [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]
    rundir.drop_records_after(path, 2)
    assert steps(tmp_path) == [1, 2]


def test_resume_removes_temporary_files_of_a_killed_checkpoint_write(tmp_path, capsys):
    out = tmp_path / "r"
    assert run(capsys, "digits-mlp", *TINY, "train.steps=2", "--out", str(out))[0] == 0
    stale = [out / ".checkpoint.pt.k1ll3d.tmp", out / ".checkpoint.prev.pt.k1ll3d.tmp"]
    for path in stale:
        path.write_bytes(b"half a checkpoint")
    assert run(capsys, "--resume", str(out), "train.steps=3")[0] == 0
    assert not any(path.exists() for path in stale)


DAMAGE = {
    "truncated": lambda data: data[: len(data) // 2],
    "empty": lambda data: b"",
    "random bytes": lambda data: os.urandom(len(data)),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys, damage):
    out = tmp_path / "r"
    assert run(capsys, "digits-mlp", *TINY, "train.steps=4", "train.checkpoint_every=2", "--out", str(out))[0] == 0
    assert checkpoint.load(out / "checkpoint.prev.pt")["step"] == 2
    latest = out / "checkpoint.pt"
    latest.write_bytes(DAMAGE[damage](latest.read_bytes()))
    code, err = run(capsys, "--resume", str(out), "train.steps=6")
    assert code == 0 and len(err) == 1
    assert f"checkpoint {latest} is damaged" in err[0] and "checkpoint.prev.pt (step 2)" in err[0]
    assert steps(out) == [0, 1, 2, 3, 4, 5, 6]  # steps 3 and 4 were trained again and logged once
    assert checkpoint.load(latest)["step"] == 6 and (out / "checkpoint.pt.damaged").is_file()


def test_damaged_checkpoints_without_a_good_previous_one_are_one_line(tmp_path, capsys):
    out = tmp_path / "r"
    assert run(capsys, "digits-mlp", *TINY, "train.steps=2", "--out", str(out))[0] == 0  # one checkpoint only
    (out / "checkpoint.pt").write_bytes(b"")
    before = snapshot(out)
    code, err = run(capsys, "--resume", str(out))
    assert code == 2 and len(err) == 1
    assert "checkpoint.pt is damaged" in err[0] and "no good previous one" in err[0]
    assert snapshot(out) == before


def test_out_at_a_file_or_an_unwritable_place_is_one_line(tmp_path, capsys):
    existing = tmp_path / "notes.txt"
    existing.write_text("mine")
    code, err = run(capsys, "digits-mlp", *TINY, "train.steps=1", "--out", str(existing))
    assert code == 2 and len(err) == 1 and "is an existing file" in err[0] and existing.read_text() == "mine"
    code, err = run(capsys, "digits-mlp", *TINY, "train.steps=1", "--out", "/proc/1/nalign-run")
    assert code == 2 and len(err) == 1 and "cannot create run folder /proc/1/nalign-run" in err[0]


def test_a_run_that_fails_before_writing_leaves_no_folder(tmp_path, capsys):
    out = tmp_path / "never"
    code, err = run(capsys, "digits-mlp", *TINY, "train.steps=1", "data.batch_size=100000", "--out", str(out))
    assert code == 2 and "exceeds" in err[0] and not out.exists()


def test_a_held_folder_is_released_when_the_run_ends(tmp_path):
    from neural_alignment.training.rundir import RunFolder

    folder = RunFolder(tmp_path / "f")
    folder.claim(resume=False)
    with pytest.raises(Exception, match="in use by another run"):
        RunFolder(tmp_path / "f").claim(resume=False)
    folder.release()
    RunFolder(tmp_path / "f").claim(resume=False)


def test_run_needs_a_recipe_or_resume_and_resume_takes_no_overwrite(tmp_path, capsys):
    code, err = run(capsys)
    assert code == 2 and len(err) == 1 and "needs a recipe NAME" in err[0]
    code, err = run(capsys, "--resume", str(tmp_path), "--overwrite")
    assert code == 2 and len(err) == 1 and "give one of them" in err[0]


@pytest.mark.parametrize("name", ["checkpoint.pt", "recipe.yaml"])
def test_a_run_folder_file_that_is_a_directory_is_one_line(tmp_path, capsys, name):
    """checkpoint.pt a directory (its previous checkpoint good) or recipe.yaml one: refused, nothing touched."""
    out = tmp_path / "r"
    assert run(capsys, "digits-mlp", *TINY, "train.steps=2", "--out", str(out))[0] == 0
    (out / name).rename(out / "checkpoint.prev.pt" if name == "checkpoint.pt" else out / "kept")
    (out / name).mkdir()
    before = snapshot(out)
    code, err = run(capsys, "--resume", str(out), "train.steps=3")
    assert code == 2
    assert err == [
        f"nalign: error: cannot resume: {out / name} is not a file (a directory?); "
        "a run folder holds it as a file: move it away"
    ]
    assert snapshot(out) == before
