"""``nalign compare --seeds K --vary key=...``: the grid, its aggregation, resuming it, running it on Ray."""

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import matplotlib.image
import pytest
import yaml

import neural_alignment.training.trainer as trainer_module
from neural_alignment.cli import main
from neural_alignment.core.errors import UserError
from neural_alignment.grids.aggregate import aggregate, mean_sem
from neural_alignment.grids.compare import compare
from neural_alignment.grids.grid import GridPoint, parse_vary, split_top_level

FEW = [
    "data.train_limit=256",
    "data.test_limit=100",
    "data.batch_size=32",
    "train.epochs=null",
    "train.steps=6",
    "train.metrics_every=3",
    "train.eval_every=3",
    "train.progress=false",
    "log.loggers=[jsonl]",
]
VARY = "model.options.hidden=[8],[16]"
RULES = ("bp", "sa")
RECORDS_GITIGNORE = Path(__file__).resolve().parent.parent / "docs" / "reproduction" / "records" / ".gitignore"
CELLS = [(rule, value) for rule in RULES for value in ("[8]", "[16]")]


def run_dir(out: Path, rule: str, value: str, seed: int) -> Path:
    return out / rule / f"model.options.hidden={value}" / f"seed{seed}"


@pytest.fixture
def trainings(monkeypatch):
    """Every training started (run folder, resumed?); ``interrupt_at`` = n stops the n-th one at step 4."""
    calls, real = [], trainer_module.train
    state = {"interrupt_at": None}

    def counting(recipe, run_dir, resume=False, on_step=None, **options):
        calls.append((Path(run_dir), resume))
        if len(calls) == state["interrupt_at"]:

            def on_step(trainer, step):
                if step == 4:
                    raise KeyboardInterrupt  # as Ctrl-C would, mid-run, after the step-4 checkpoint

        return real(recipe, run_dir, resume, on_step, **options)

    monkeypatch.setattr(trainer_module, "train", counting)
    return calls, state


def test_a_2x2x2_grid_writes_mean_and_sem_per_rule_and_value(tmp_path, capsys, trainings):
    out = tmp_path / "grid"
    code = main(
        ["compare", "digits-mlp", "--rules", ",".join(RULES), "--seeds", "2", "--vary", VARY, *FEW, "--out", str(out)]
    )
    assert code == 0 and len(trainings[0]) == 8
    report = json.loads((out / "comparison.json").read_text())
    assert report["seeds"] == [0, 1] and report["vary"] == {"key": "model.options.hidden", "values": ["[8]", "[16]"]}
    assert [(row["rule"], row["value"]) for row in report["rows"]] == CELLS
    for row in report["rows"]:
        summaries = [
            json.loads((run_dir(out, row["rule"], row["value"], s) / "summary.json").read_text()) for s in (0, 1)
        ]
        accuracies = [s["test_acc"] for s in summaries]
        assert row["n"] == 2 and row["failed"] == 0
        assert row["test_acc"] == pytest.approx(statistics.mean(accuracies))
        assert row["test_acc_sem"] == pytest.approx(statistics.stdev(accuracies) / 2**0.5)
        assert row["test_acc_runs"] == accuracies  # every seed's value, in seed order
        for seed in (0, 1):  # each run trained its own seed and value
            recipe = yaml.safe_load((run_dir(out, row["rule"], row["value"], seed) / "recipe.yaml").read_text())
            assert recipe["train"]["seed"] == seed and recipe["rule"]["name"] == row["rule"]
            assert recipe["model"]["options"]["hidden"] == json.loads(row["value"])
    table = (out / "comparison.md").read_text().split("\n\n", 1)[1].strip()
    assert "| model.options.hidden |" in table and "±" in table and table in capsys.readouterr().out
    for row, line in zip(report["rows"], table.splitlines()[2:], strict=True):
        assert line.rstrip(" |").endswith(" ".join(f"{a:.4f}" for a in row["test_acc_runs"]))
    image = matplotlib.image.imread(out / "comparison.png")
    assert image.shape == (480, 1200, 4) and image[..., :3].std() > 0.05


def test_an_interrupted_grid_continues_without_retraining_finished_runs(tmp_path, trainings):
    calls, state = trainings
    out = tmp_path / "grid"
    args = dict(
        name="digits-mlp", rules=RULES, overrides=[*FEW, "train.checkpoint_every=2"], out=out, seeds=2, vary=VARY
    )
    state["interrupt_at"] = 4
    with pytest.raises(KeyboardInterrupt):
        compare(**args)
    assert len(calls) == 4
    finished = [path for path, _ in calls[:3]]
    stamps = {path: (path / "checkpoint.pt").stat().st_mtime_ns for path in finished}
    interrupted = calls[3][0]
    assert json.loads((interrupted / "summary.json").read_text())["status"] == "stopped"

    state["interrupt_at"] = None
    report = compare(**args)
    again = calls[4:]
    assert len(again) == 5 and not {path for path, _ in again} & set(finished)  # 8 runs - 3 finished
    assert again[0] == (interrupted, True)  # the interrupted run resumed from its checkpoint
    assert all(not resumed for _, resumed in again[1:])
    assert {path: (path / "checkpoint.pt").stat().st_mtime_ns for path in finished} == stamps
    assert all(row["n"] == 2 for row in report["rows"])
    steps = [json.loads(line)["step"] for line in (interrupted / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 3, 6]  # one uninterrupted record, from step 0


def test_the_grid_runs_on_a_local_ray_cluster(tmp_path):
    out = tmp_path / "ray"
    report = compare("digits-mlp", ["bp", "fa"], FEW, out, seeds=2, backend="ray")
    assert [(row["rule"], row["n"]) for row in report["rows"]] == [("bp", 2), ("fa", 2)]
    assert all(run["status"] == "finished" for run in report["runs"])
    for rule in ("bp", "fa"):
        for seed in (0, 1):
            assert json.loads((out / rule / f"seed{seed}" / "summary.json").read_text())["steps"] == 6


def test_a_failed_run_is_counted_not_averaged():
    ok = {"status": "finished", "test_acc": 0.5}
    rows = aggregate(
        [
            (GridPoint("kp", None, 0), ok),
            (GridPoint("kp", None, 1), {"status": "diverged", "error": "x"}),
            (GridPoint("kp", None, 2), {**ok, "test_acc": 0.7}),
        ]
    )
    assert rows[0]["n"] == 2 and rows[0]["failed"] == 1 and rows[0]["test_acc"] == pytest.approx(0.6)
    assert rows[0]["test_acc_sem"] == pytest.approx(0.1)  # stdev(0.5, 0.7) = 0.1414 / sqrt(2)


def test_mean_sem_against_the_textbook_formula():
    values = [0.81, 0.84, 0.79, 0.9]
    mean, sem = mean_sem(values)
    assert mean == pytest.approx(statistics.mean(values))
    assert sem == pytest.approx(statistics.stdev(values) / len(values) ** 0.5)
    assert mean_sem([0.3]) == (0.3, None) and mean_sem([]) == (None, None)


def test_vary_values_split_outside_brackets():
    assert split_top_level("[8,8],[16],{a: 1, b: 2},0.1") == ["[8,8]", "[16]", "{a: 1, b: 2}", "0.1"]
    vary = parse_vary("model.options.channels=[16,32], [16,16,32,32]")
    assert vary.key == "model.options.channels" and vary.values == ("[16,32]", "[16,16,32,32]")


@pytest.mark.parametrize(
    "text, words",
    [
        ("optim.task.lr", "key=v1,v2"),
        ("=0.1,0.2", "key=v1,v2"),
        ("optim.task.lr=0.1,,0.2", "key=v1,v2"),
        ("train.seed=1,2", "--seeds"),
        ("optim.task.lr=0.1,0.1", "repeats"),
    ],
)
def test_a_bad_vary_is_a_user_error(text, words):
    with pytest.raises(UserError, match=words):
        parse_vary(text)


def test_bad_grid_input_fails_before_training(tmp_path, capsys):
    out = tmp_path / "c"
    assert main(["compare", "digits-mlp", "--rules", "bp", "--seeds", "0", *FEW, "--out", str(out)]) == 2
    assert "--seeds must be at least 1" in capsys.readouterr().err
    assert (
        main(["compare", "digits-mlp", "--rules", "bp", "--vary", "optim.task.lrr=0.1,0.2", *FEW, "--out", str(out)])
        == 2
    )
    assert "optim.task.lrr" in capsys.readouterr().err
    assert main(["compare", "digits-mlp", "--rules", "bp", "--seeds", "2", "--no-train", *FEW]) == 2
    assert "--no-train reads the runs of an existing comparison: give its folder with --out" in capsys.readouterr().err
    assert not out.exists()


def test_a_second_compare_into_a_folder_in_use_is_refused_and_changes_nothing(tmp_path, capsys):
    """While a real compare process runs (it holds the folder's lock), the same compare is refused in
    one line before it trains or writes anything (it used to lose its cells to the runs' locks)."""
    out = tmp_path / "grid"
    args = ["compare", "digits-mlp", "--rules", "bp", "--seeds", "2", *FEW, "train.steps=5000", "--out", str(out)]
    first = subprocess.Popen(
        [sys.executable, "-m", "neural_alignment.cli", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 120
        while not (out / "bp" / "seed0" / "recipe.yaml").is_file() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert first.poll() is None, "the first compare ended before the second started"
        before = sorted(p.relative_to(out) for p in out.rglob("*"))
        assert main(args) == 2
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and "in use by another nalign compare" in err[0] and str(out) in err[0]
        after = sorted(p.relative_to(out) for p in out.rglob("*"))

        def others(paths):  # all but the first compare's running run (its files come and go as it writes)
            return {p for p in paths if Path("bp", "seed0") not in p.parents}

        assert others(before) == others(after)  # nothing removed, nothing added
        assert not (out / "comparison.json").exists()
    finally:
        first.kill()
        first.wait()


def test_a_grid_with_a_diverged_cell_exits_1_and_its_report_names_every_cell(tmp_path, capsys):
    out = tmp_path / "grid"
    vary = "optim.task.lr=0.05,1e30"
    assert (
        main(["compare", "digits-mlp", "--rules", "bp", "--seeds", "2", "--vary", vary, *FEW, "--out", str(out)]) == 1
    )
    report = json.loads((out / "comparison.json").read_text())
    assert report["failed"] == 2 and [r["status"] for r in report["runs"]] == ["finished"] * 2 + ["diverged"] * 2
    assert capsys.readouterr().err.count("diverged") >= 2
    # nalign report reads the grid folder (it used to refuse it) and labels each run by its cell
    assert main(["report", str(out), "--out", str(tmp_path / "r")]) == 0
    page = (tmp_path / "r" / "index.html").read_text()
    labels = re.findall(r"<tr><td>([^<]*)</td><td><code>", page)
    expected = [f"bp optim.task.lr={v} seed{s}" for v in ("0.05", "1e30") for s in (0, 1)]
    assert labels == expected  # the diverged cells logged their step 0 (the first update diverged)
    # runs that logged nothing (killed before their step 0 was written) are named in a notice, not drawn
    for cell in ("seed0", "seed1"):
        (out / "bp" / "optim.task.lr=1e30" / cell / "metrics.jsonl").write_text("")
    capsys.readouterr()
    assert main(["report", str(out), "--out", str(tmp_path / "r")]) == 0
    page = (tmp_path / "r" / "index.html").read_text()
    assert re.findall(r"<tr><td>([^<]*)</td><td><code>", page) == expected[:2]
    assert f"no records (yet) of {expected[2]}, {expected[3]}" in capsys.readouterr().err
    # a leaf run passed alone keeps its rule and cell in its label
    assert main(["report", str(out / "bp" / "optim.task.lr=0.05" / "seed1"), "--out", str(tmp_path / "leaf")]) == 0
    assert "<tr><td>bp optim.task.lr=0.05 seed1</td>" in (tmp_path / "leaf" / "index.html").read_text()


def git(cwd: Path, *args: str) -> str:
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, env={**os.environ, **env})
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_grid_committed_under_the_records_gitignore_redraws_and_continues_from_a_clone(tmp_path, trainings, capsys):
    """docs/reproduction/records/.gitignore keeps only the runs' records; a clone of what it keeps
    redraws the table without training; with a run whose record was never committed, --no-train
    counts it as not run, and a plain compare trains it (and only it)."""
    calls, _ = trainings
    repo = tmp_path / "repo"
    records = repo / "records"
    records.mkdir(parents=True)
    (records / ".gitignore").write_text(RECORDS_GITIGNORE.read_text())
    args = dict(name="digits-mlp", rules=RULES, overrides=FEW, seeds=2, vary=VARY)
    first = compare(**args, out=records / "grid")
    assert len(calls) == 8
    git(repo, "init", "-q")
    git(repo, "add", "records")
    git(repo, "commit", "-q", "-m", "records")
    kept = sorted(Path(p).name for p in git(repo, "ls-files").split())
    assert set(kept) == {
        ".gitignore",
        "summary.json",
        "metrics.jsonl",
        "comparison.md",
        "comparison.json",
        "comparison.png",
    }
    assert kept.count("summary.json") == kept.count("metrics.jsonl") == 8  # no checkpoint, no recipe.yaml

    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(repo), str(clone))
    table = (records / "grid" / "comparison.md").read_text()
    again = compare(**args, out=clone / "records" / "grid")
    assert len(calls) == 8 and (clone / "records" / "grid" / "comparison.md").read_text() == table
    assert [row["test_acc"] for row in again["rows"]] == [row["test_acc"] for row in first["rows"]]

    unfinished = run_dir(clone / "records" / "grid", "sa", "[16]", 1)
    shutil.rmtree(unfinished)  # a run the grid had not finished when its records were committed
    capsys.readouterr()  # the tables printed so far
    partial = compare(**args, out=clone / "records" / "grid", train=False)
    row = partial["rows"][CELLS.index(("sa", "[16]"))]
    assert len(calls) == 8 and (row["n"], row["failed"], row["not_run"]) == (1, 0, 1)
    sa16 = json.loads((run_dir(records / "grid", "sa", "[16]", 0) / "summary.json").read_text())["test_acc"]
    assert row["test_acc"] == sa16 and row["test_acc_runs"] == [sa16] and row["test_acc_sem"] is None
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| sa   | [16]"))
    assert "| 1 (1 not run) |" in line
    compare(**args, out=clone / "records" / "grid")
    assert calls[8:] == [(unfinished, False)]
    assert json.loads((unfinished / "summary.json").read_text())["status"] == "finished"
