"""nalign search / search-report on tiny digits runs: a local search killed mid-way resumes without
repeating a trial, the same search on a real 2-CPU Ray cluster, failed trials, the importance
report, and proof that no search reads a test metric."""

import json
import os
import pickle
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from neural_alignment.cli import main
from neural_alignment.search.run import plan_for, run_search
from neural_alignment.search.trials import SearchPlan
from neural_alignment.training.trainer import Trainer

TINY = """\
name: tiny-search
base: digits-mlp
rule: {{name: wm}}
data: {{train_limit: 200, test_limit: 60, val_split: 0.25, batch_size: 32}}
model: {{options: {{hidden: [8]}}}}
train: {{steps: {steps}, epochs: null, progress: false, metrics_every: 2}}
log: {{loggers: [jsonl]}}
search:
  max_evals: 6
  startup_trials: 3
  space:
    rule.noise_std: {{dist: uniform, low: 0.0, high: 1.0}}
    rule.weights.decay: {{dist: loguniform, low: 1.0e-4, high: 1.0e-2}}
    rule.weights.amp: {{dist: uniform, low: 0.1, high: 2.0, times: rule.weights.decay}}
    rule.flags.bo_relu: {{dist: choice, options: [false, true]}}
{extra}"""


def tiny(tmp_path, steps=4, extra=""):
    path = tmp_path / "tiny-search.yaml"
    path.write_text(TINY.format(steps=steps, extra=extra))
    return str(path)


def records(out):
    return [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]


def finished_stamps(out):
    """Per finished trial folder, its summary's modification time and text."""
    stamps = {}
    for record in records(out):
        summary = out / record["run_dir"] / "summary.json"
        stamps[record["trial"]] = (summary.stat().st_mtime_ns, summary.read_text())
    return stamps


def interrupt_after(command, out, count, signum, patience=300):
    """Run ``command`` (a search into ``out``) in a real process; send it ``signum`` once ``count``
    trials are recorded; wait for it to end (killed after 120 s more if the signal did not end it)."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + patience
        while time.monotonic() < deadline and process.poll() is None:
            if (out / "trials.jsonl").is_file() and len(records(out)) >= count:
                break
            time.sleep(0.05)
        os.kill(process.pid, signum)
        process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_local_search_killed_after_3_resumes_to_6_without_repeating(tmp_path):
    out = tmp_path / "search"
    command = [
        sys.executable,
        "-m",
        "neural_alignment.cli",
        "search",
        tiny(tmp_path, steps=8),
        "--out",
        str(out),
        "--max-evals",
        "6",
    ]
    interrupt_after(command, out, 3, signal.SIGKILL)
    before = records(out)
    assert 3 <= len(before) < 6, "the search was not killed in the middle"
    stamps = finished_stamps(out)

    assert main(["search", "--resume", str(out)]) == 0
    after = records(out)
    assert sorted(r["trial"] for r in after) == list(range(6))
    assert len({json.dumps(r["values"], sort_keys=True) for r in after}) == 6  # six different points
    for record in before:  # the trials finished before the kill are kept as they were, not trained again
        assert next(r for r in after if r["trial"] == record["trial"]) == record
    assert {t: v for t, v in finished_stamps(out).items() if t in stamps} == stamps
    assert len(pickle.loads((out / "trials.pkl").read_bytes()).trials) == 6
    assert all(r["status"] == "finished" and 0 <= r["score"] <= 1 for r in after)
    best = max(after, key=lambda r: r["score"])
    assert (out / "best.yaml").read_text().startswith(f"# val_acc {best['score']:.4f} (trial {best['trial']})")
    assert main(["run", str(out / "best.yaml"), "--out", str(tmp_path / "best-run")]) == 0  # best.yaml runs


def test_a_trial_recorded_before_the_trials_pickle_was_saved_is_not_run_again(tmp_path):
    """A kill between a trial's record and the save of trials.pkl: the resumed search keeps the record."""
    out = tmp_path / "search"
    assert main(["search", tiny(tmp_path), "--out", str(out), "--max-evals", "2"]) == 0
    trials = pickle.loads((out / "trials.pkl").read_bytes())
    last = trials._dynamic_trials.pop()  # as trials.pkl was after trial 0: trial 1 recorded, not yet pickled
    trials._ids.discard(last["tid"])
    trials.refresh()
    (out / "trials.pkl").write_bytes(pickle.dumps(trials))
    before = records(out)

    assert main(["search", "--resume", str(out)]) == 0
    assert records(out) == before  # the same records, seconds included: trial 1 was not evaluated again
    assert len(pickle.loads((out / "trials.pkl").read_bytes()).trials) == 2


def test_search_with_the_ray_backend_on_a_local_2_cpu_cluster(tmp_path, monkeypatch, capsys):
    pytest.importorskip("ray")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    out = tmp_path / "ray-search"
    assert (
        main(
            ["search", tiny(tmp_path), "--out", str(out), "--max-evals", "4", "--backend", "ray", "--parallelism", "2"]
        )
        == 0
    )
    got = records(out)
    assert len(got) == 4 and len({r["trial"] for r in got}) == 4
    for record in got:  # each trial is an ordinary run folder
        summary = json.loads((out / record["run_dir"] / "summary.json").read_text())
        assert record["status"] == summary["status"] == "finished" and record["score"] == summary["val_acc"]
        assert record["run_dir"] == f"trials/trial-{record['trial']}"
    assert (out / "best.yaml").is_file() and (out / "ray").is_dir()
    assert capsys.readouterr().out.count("[search] trial ") == 4  # a progress line per trial


@pytest.mark.slow
def test_an_interrupted_ray_search_resumes_through_rays_experiment_restore(tmp_path, monkeypatch):
    pytest.importorskip("ray")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    out = tmp_path / "ray-search"
    command = [
        sys.executable,
        "-m",
        "neural_alignment.cli",
        "search",
        tiny(tmp_path, steps=30),
        "--out",
        str(out),
        "--backend",
        "ray",
        "--parallelism",
        "2",
    ]
    interrupt_after(command, out, 2, signal.SIGINT)  # Ctrl-C: Tune saves the experiment and stops
    before = records(out)
    assert 2 <= len(before) < 6
    assert main(["search", "--resume", str(out)]) == 0
    after = records(out)
    assert len(after) == 6 and len({r["trial"] for r in after}) == 6
    for record in before:  # finished trials are not run again
        assert next(r for r in after if r["trial"] == record["trial"]) == record


FAILING = """\
    train.accumulate: {dist: choice, options: [1, 3]}
    optim.task.lr: {dist: choice, options: [0.05, 1.0e+30]}
"""


@pytest.fixture(scope="module")
def failing_search(tmp_path_factory):
    """A search in which some trials raise (accumulate 3 does not divide the batch) or diverge (lr 1e30)."""
    tmp_path = tmp_path_factory.mktemp("failing")
    out = tmp_path / "search"
    plan = plan_for(tiny(tmp_path, extra=FAILING), [], 8, "local", 1)
    run_search(plan, out, echo=lambda line: None)
    return out


def test_a_failing_trial_is_recorded_and_the_search_ends_normally(failing_search):
    got = records(failing_search)
    assert len(got) == 8
    statuses = {r["status"] for r in got}
    assert {"failed", "diverged", "finished"} <= statuses
    for record in got:
        if record["status"] == "failed":
            assert record["values"]["train.accumulate"] == 3 and "accumulate" in record["error"]
        if record["status"] != "finished":
            assert record["score"] is None and record["error"]
    assert (failing_search / "best.yaml").is_file() and (failing_search / "summary.md").is_file()


def test_search_report_ranks_the_choices(failing_search, capsys):
    assert main(["search-report", str(failing_search)]) == 0
    printed = capsys.readouterr().out
    assert (failing_search / "importance.png").stat().st_size > 0 and (failing_search / "scores.png").stat().st_size > 0
    # by hand: the mean score per value of rule.flags.bo_relu over the trials with a score
    scored = [r for r in records(failing_search) if r["score"] is not None]
    for value in (False, True):
        scores = [r["score"] for r in scored if r["values"]["rule.flags.bo_relu"] == value]
        if scores:
            assert f"| {value} | {len(scores)} | {sum(scores) / len(scores):.4f} |" in printed
    assert "rule.flags.bo_relu" in printed and "rule.noise_std" not in printed  # only categorical choices


def test_no_search_reads_a_test_metric(tmp_path, monkeypatch, capsys):
    # a test metric is refused outright
    assert main(["search", tiny(tmp_path), "--out", str(tmp_path / "x"), "search.metric=test_acc"]) == 2
    assert "reads the test set" in capsys.readouterr().err
    # and the test set's numbers do not reach the search: poison them, the search is unchanged
    real = Trainer.evaluate_split

    def poisoned(self, dataset, split):
        values = real(self, dataset, split)
        return {k: 1000.0 + v for k, v in values.items()} if split == "test" else values

    monkeypatch.setattr(Trainer, "evaluate_split", poisoned)
    out = tmp_path / "search"
    plan = plan_for(tiny(tmp_path), [], 3, "local", 1)
    best = run_search(plan, out, echo=lambda line: None)
    got = records(out)
    assert all(r["score"] == r["val_acc"] <= 1 for r in got) and best["score"] == max(r["val_acc"] for r in got)
    written = (out / "trials.jsonl").read_text() + (out / "best.yaml").read_text() + (out / "summary.md").read_text()
    assert not re.search(r"test_(acc|loss|top)", written) and "1000." not in written
    # the run folders did see the poisoned test numbers: the search ignored them
    assert all(json.loads((out / r["run_dir"] / "summary.json").read_text())["test_acc"] >= 1000 for r in got)


def test_resume_needs_a_search_folder(tmp_path, capsys):
    assert main(["search", "--resume", str(tmp_path)]) == 2
    assert "search.json" in capsys.readouterr().err


def test_a_new_search_does_not_overwrite_one(tmp_path, capsys):
    out = tmp_path / "s"
    SearchPlan("digits-mlp").save(out)
    assert main(["search", tiny(tmp_path), "--out", str(out)]) == 2
    assert "--resume" in capsys.readouterr().err


def test_trials_are_wandb_runs_grouped_under_the_search(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "grouped"
    plan = plan_for(tiny(tmp_path, steps=2), ["log.loggers=[jsonl,wandb]"], 1, "local", 1)
    run_search(plan, out, echo=lambda line: None)
    trial = out / records(out)[0]["run_dir"]
    assert yaml.safe_load((trial / "recipe.yaml").read_text())["log"]["options"]["wandb"]["group"] == "grouped"
    assert list((trial / "wandb").glob("offline-run-*"))  # a real (offline) W&B run in the trial's folder


def test_the_ray_callback_keeps_a_record_trials_jsonl_already_holds(tmp_path):
    """A trial Ray restarts after its record was written (an interruption between the two) reports
    the same record again: trials.jsonl keeps the first, nothing is written twice."""
    pytest.importorskip("ray")
    from neural_alignment.search.on_ray import record_callback
    from neural_alignment.search.trials import Objective, TrialLog

    objective = Objective({"rule.noise_std": {"dist": "uniform", "low": 0, "high": 1}}, "val_acc", "max", 1, "t", False)
    first = {"trial": "abc", "values": {"rule.noise_std": 0.5}, "score": 0.5, "status": "finished", "seconds": 1.0}
    TrialLog(tmp_path, objective, 2, echo=lambda line: None).add(first)
    callback = record_callback(tmp_path, objective, 2)
    callback.on_trial_result(0, [], None, {"record": json.dumps({**first, "seconds": 9.0})})
    callback.on_trial_result(0, [], None, {"record": json.dumps({**first, "trial": "def"})})
    assert records(tmp_path) == [first, {**first, "trial": "def"}]


def folder_state(folder):
    """Every file below ``folder`` with its bytes: what a refused command must leave as it was."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_second_search_on_a_folder_in_use_is_refused_and_changes_nothing(tmp_path, capsys):
    """While a real search process runs (it holds the folder's lock), a second search, new or
    --resume, is refused in one line before it writes or removes anything."""
    out = tmp_path / "search"
    first = subprocess.Popen(
        [sys.executable, "-m", "neural_alignment.cli", "search", tiny(tmp_path, steps=5000), "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not (out / "search.json").is_file() and time.monotonic() < deadline:  # written under the lock
            time.sleep(0.05)
        for second in (["search", tiny(tmp_path), "--out", str(out)], ["search", "--resume", str(out)]):
            before = folder_state(out)
            assert first.poll() is None, "the first search ended before the second started"
            assert main(second) == 2
            err = capsys.readouterr().err.splitlines()
            assert len(err) == 1 and "in use by another search" in err[0] and str(out) in err[0]
            held = folder_state(out)
            assert set(before) <= set(held)  # nothing removed
            assert all(
                held[k] == v for k, v in before.items() if "trial-0000/" not in k
            )  # only the running trial grows
    finally:
        first.kill()
        first.wait()


def test_a_space_key_the_recipe_lacks_is_one_line_before_any_trial(tmp_path, capsys):
    extra = "    rule.noise_sd: {dist: uniform, low: 0.0, high: 1.0}\n"
    out = tmp_path / "search"
    assert main(["search", tiny(tmp_path, extra=extra), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown recipe key 'rule.noise_sd'" in err[0] and "noise_std" in err[0]
    assert not out.exists()  # nothing written
    # a key set only in the second branch of a conditional choice is caught too
    branch = "    pick:\n      dist: choice\n      options: [{rule.noise_std: 0.1}, {train.stpes: 3}]\n"
    assert main(["search", tiny(tmp_path, extra=branch), "--out", str(out)]) == 2
    assert "unknown recipe key 'train.stpes'" in capsys.readouterr().err and not out.exists()


def test_a_search_killed_in_a_trial_resumes_that_trials_run_folder(tmp_path):
    """A real search process killed (SIGKILL) once its trial has checkpoints: --resume resumes that
    trial's run folder from its checkpoint; it is not emptied and trained again from step 0."""
    out = tmp_path / "search"
    recipe = tmp_path / "checkpointed.yaml"
    recipe.write_text(
        TINY.format(steps=150, extra="").replace("metrics_every: 2", "metrics_every: 25, checkpoint_every: 5")
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "neural_alignment.cli", "search", str(recipe), "--out", str(out), "--max-evals", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    trial = out / "trials" / "trial-0000"
    try:
        deadline = time.monotonic() + 120
        while not (trial / "checkpoint.prev.pt").is_file() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        process.kill()
        process.wait()
    assert (trial / "checkpoint.pt").is_file() and not (trial / "summary.json").is_file(), "not killed mid-trial"
    (trial / "notes.txt").write_text("the user's own notes")  # a fresh run would empty the folder
    killed_at = torch.load(trial / "checkpoint.pt", weights_only=True)["step"]
    assert main(["search", "--resume", str(out)]) == 0
    assert (trial / "notes.txt").read_text() == "the user's own notes"
    summary = json.loads((trial / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["steps"] == 150 and 0 < killed_at < 150
    assert records(out)[0]["status"] == "finished"


def test_damaged_records_are_read_with_a_notice_and_kept(tmp_path, capsys):
    """A torn trials.pkl is rebuilt by replaying trials.jsonl (no trial trained again); a torn last
    line of trials.jsonl is skipped with a notice by search-report and by --resume, which keeps the
    file as it was in trials.jsonl.damaged and runs that trial again."""
    out = tmp_path / "search"
    assert main(["search", tiny(tmp_path), "--out", str(out), "--max-evals", "2"]) == 0
    before = records(out)
    pickled = (out / "trials.pkl").read_bytes()
    (out / "trials.pkl").write_bytes(pickled[:100])
    capsys.readouterr()
    assert main(["search", "--resume", str(out), "--max-evals", "3"]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if "notice" in line]  # the trials' schedules warn
    assert len(err) == 1 and "trials.pkl is unreadable" in err[0] and "rebuilt" in err[0]
    assert (out / "trials.pkl.damaged").read_bytes() == pickled[:100]
    after = records(out)
    assert after[:2] == before and len(after) == 3  # the recorded trials kept as they were (seconds too)
    assert len(pickle.loads((out / "trials.pkl").read_bytes()).trials) == 3

    whole = (out / "trials.jsonl").read_text()
    torn = whole + '{"trial": 3, "values": {"rule.no'
    (out / "trials.jsonl").write_text(torn)
    assert main(["search-report", str(out)]) == 0
    captured = capsys.readouterr()
    assert "skipped unreadable line(s) 4" in captured.err and "3 trials, 3 with a score" in captured.out
    assert main(["search", "--resume", str(out), "--max-evals", "4"]) == 0
    assert "trials.jsonl.damaged" in capsys.readouterr().err
    assert (out / "trials.jsonl.damaged").read_text() == torn
    assert records(out)[:3] == after and [r["trial"] for r in records(out)] == [0, 1, 2, 3]


def test_a_search_in_which_no_trial_scored_exits_1(tmp_path, capsys):
    hopeless = tiny(tmp_path, extra="    optim.task.lr: {dist: uniform, low: 1.0e+29, high: 1.0e+30}\n")
    assert main(["search", hopeless, "--out", str(tmp_path / "s"), "--max-evals", "2"]) == 1
    assert "no trial finished with a score" in capsys.readouterr().out


def test_search_report_of_a_one_weight_search_plots_score_and_angle_against_the_value(tmp_path, capsys):
    """A space of one continuous value: no importance table or blank importance.png; values.png
    holds each scored trial's (value, score) and (value, angle); scores.png numbers trials as the records do."""
    from neural_alignment.analysis.importance import scores_figure, values_figure

    recipe = tmp_path / "one.yaml"
    recipe.write_text(TINY.format(steps=4, extra="").split("  space:")[0] + "  space:\n" + ONE_WEIGHT)
    out = tmp_path / "s"
    SearchPlan(str(recipe), max_evals=3).save(out)
    rows = [(0, 1e-3, 0.5, 80.0), (1, 1e-2, 0.7, 60.0), (2, 3e-3, None, None)]
    trials = [
        {"trial": t, "values": {"rule.weights.decay": v}, "score": s, "status": "finished" if s else "failed"}
        | ({"mean_weight_angle": a} if a else {})
        for t, v, s, a in rows
    ]
    (out / "trials.jsonl").write_text("".join(json.dumps(r) + "\n" for r in trials))
    assert main(["search-report", str(out)]) == 0
    assert "no importance table" in capsys.readouterr().out
    assert not (out / "importance.png").exists() and not (out / "importance.md").exists()
    assert (out / "values.png").stat().st_size > 0 and (out / "scores.png").stat().st_size > 0
    score_ax, angle_ax = values_figure(trials, {"rule.weights.decay": True}, "val_acc").axes
    assert [tuple(p) for p in score_ax.lines[0].get_xydata()] == [(1e-3, 0.5), (1e-2, 0.7)]
    assert [tuple(p) for p in angle_ax.lines[0].get_xydata()] == [(1e-3, 80.0), (1e-2, 60.0)]
    assert score_ax.get_xscale() == "log"
    marks = scores_figure(trials, "val_acc", "max").axes[0].lines
    assert [tuple(p) for p in marks[0].get_xydata()] == [(0, 0.5), (1, 0.7)] and list(marks[-1].get_xdata()) == [2]
    assert values_figure(trials[2:], {"rule.weights.decay": True}, "val_acc") is None  # nothing scored: no figure


ONE_WEIGHT = "    rule.weights.decay: {dist: loguniform, low: 1.0e-4, high: 1.0e-1}\n"
