"""``nalign compare`` on digits with few steps: every rule in the table, JSON/Markdown/PNG written."""

import json

from neural_alignment.cli import main
from neural_alignment.grids.compare import dataset_overrides

FEW = [
    "data.train_limit=256",
    "data.test_limit=100",
    "data.batch_size=32",
    "model.options.hidden=[16]",
    "train.steps=6",
    "train.metrics_every=3",
    "train.eval_every=3",
    "train.progress=false",
    "log.loggers=[jsonl]",
]


def test_compare_writes_table_json_markdown_png(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", "digits-mlp", "--rules", "bp,fa,kp", *FEW, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for rule in ("bp", "fa", "kp"):
        assert f"| {rule} " in printed
        assert (out / rule / "summary.json").exists()
    report = json.loads((out / "comparison.json").read_text())
    rows = {row["rule"]: row for row in report["rows"]}
    assert list(rows) == ["bp", "fa", "kp"] and report["dataset"] == "digits"
    assert rows["bp"]["relative_step_time"] == 1.0 and rows["bp"]["mean_weight_angle"] == 0.0
    assert rows["fa"]["last_weight_angle"] > 30  # B random and fixed
    assert rows["bp"]["mean_grad_angle"] == 0.0 and rows["fa"]["mean_grad_angle"] > 30
    assert "| mean angle | mean grad angle |" in printed
    for row in rows.values():
        assert 0 <= row["test_acc"] <= 1 and row["steps"] == 6 and row["timed_seconds_per_step"] > 0
    assert "time/step vs bp" in (out / "comparison.md").read_text()
    # the per-layer table: the latest weight / gradient angle of each layer from each run's record
    for layer in ("1", "3"):
        fa = [json.loads(line) for line in (out / "fa" / "metrics.jsonl").read_text().splitlines()]
        angle = [r[f"angle/{layer}"] for r in fa if f"angle/{layer}" in r][-1]
        grad = [r[f"grad_angle/{layer}"] for r in fa if f"grad_angle/{layer}" in r][-1]
        assert f"| {layer} " in printed and f"| {angle:.1f} / {grad:.1f} " in printed
    assert "| 0.0 / 0.0 " in printed  # bp: B is W
    assert (out / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_dataset_falls_back_to_digits(tmp_path):
    extra, notice = dataset_overrides("fmnist-mlp", [f"data.root={tmp_path}"])
    assert "data.dataset=digits" in extra and "fashion_mnist is unavailable" in notice and "not found" in notice


def test_unknown_rule_fails_before_training(tmp_path, capsys):
    assert main(["compare", "digits-mlp", "--rules", "bp,kpp", "--out", str(tmp_path / "c")]) == 2
    assert "Did you mean 'kp'" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_a_bad_recipe_for_a_later_rule_fails_before_training(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["compare", "digits-mlp", "--rules", "bp,kp", *FEW, "by_rule.kp.optim.alignment.momentun=0.9"]
    assert main([*args, "--out", str(tmp_path / "c")]) == 2
    assert "'optim.alignment.momentun' in by_rule.kp" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_the_trainers_held_for_the_timing_share_one_dataset_in_memory(tmp_path, monkeypatch):
    from neural_alignment.grids import compare
    from neural_alignment.training.trainer import Trainer

    held = []

    class Recording(Trainer):  # compare holds these at once (the runs themselves train one at a time)
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            held.append(self.splits)

    monkeypatch.setattr(compare, "Trainer", Recording)
    main(["compare", "digits-mlp", "--rules", "bp,fa", *FEW, "--out", str(tmp_path / "c")])
    assert len(held) == 2 and held[0] is held[1]
