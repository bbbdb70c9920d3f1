"""The executor: a finished run is reused, an interrupted one resumes, a failing one is recorded."""

import json
import time

from tiny_runs import DIGITS_MLP_FEW as TINY

from neural_alignment.grids.executor import RunSpec, run_all, run_one


def test_a_finished_run_is_reused_not_retrained(tmp_path):
    spec = RunSpec("digits-mlp", (*TINY, "train.steps=4"), tmp_path / "a")
    before = time.time()
    first = run_one(spec)
    assert first["status"] == "finished" and first["steps"] == 4
    assert before <= first["started_at"] and first["started_at"] + first["seconds"] <= time.time() + 1e-3
    stamp = (tmp_path / "a" / "checkpoint.pt").stat().st_mtime_ns
    again = run_one(spec)
    assert again["reused"] and again["test_acc"] == first["test_acc"]
    # when and how long it trained come from summary.json: a record written after a kill says the truth
    assert (again["started_at"], again["seconds"]) == (first["started_at"], first["seconds"])
    assert (tmp_path / "a" / "checkpoint.pt").stat().st_mtime_ns == stamp


def test_an_interrupted_run_resumes_from_its_checkpoint(tmp_path):
    run_dir = tmp_path / "b"
    run_one(RunSpec("digits-mlp", (*TINY, "train.steps=3"), run_dir))
    (run_dir / "summary.json").write_text(json.dumps({"status": "stopped", "step": 3}))
    summary = run_one(RunSpec("digits-mlp", (*TINY, "train.steps=6"), run_dir))
    assert summary["status"] == "finished" and summary["steps"] == 6
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps[0] == 0 and steps[-1] == 6 and len(steps) == len(set(steps))  # step 0 once


def test_a_failing_run_is_recorded_and_the_rest_go_on(tmp_path):
    specs = [
        RunSpec("digits-mlp", (*TINY, "rule.name=nosuchrule", "train.steps=2"), tmp_path / "bad"),
        RunSpec("digits-mlp", (*TINY, "train.steps=2"), tmp_path / "good"),
    ]
    done = []
    bad, good = run_all(specs, on_done=lambda spec, summary: done.append(spec.run_dir.name))
    assert bad["status"] == "failed" and "nosuchrule" in bad["error"] and bad["seconds"] >= 0
    assert good["status"] == "finished"
    assert done == ["bad", "good"]


def test_a_failed_attempt_without_a_checkpoint_is_replaced_by_a_fresh_run(tmp_path):
    run_dir = tmp_path / "c"
    run_dir.mkdir()
    (run_dir / "recipe.yaml").write_text("name: left over\n")
    (run_dir / "summary.json").write_text(json.dumps({"status": "failed", "error": "boom"}))
    summary = run_one(RunSpec("digits-mlp", (*TINY, "train.steps=2"), run_dir))
    assert summary["status"] == "finished" and summary["steps"] == 2
    assert "name: digits-mlp" in (run_dir / "recipe.yaml").read_text()


def test_an_interrupted_run_is_not_resumed_with_another_recipe(tmp_path):
    run_dir = tmp_path / "d"
    run_one(RunSpec("digits-mlp", (*TINY, "train.steps=2"), run_dir))
    (run_dir / "summary.json").write_text(json.dumps({"status": "stopped", "step": 2}))
    before = (run_dir / "metrics.jsonl").read_text()
    summary = run_one(RunSpec("digits-mlp", (*TINY, "train.steps=4", "rule.name=kp"), run_dir))
    assert summary["status"] == "failed" and "rule.name ('bp' -> 'kp')" in summary["error"]
    assert (run_dir / "metrics.jsonl").read_text() == before
