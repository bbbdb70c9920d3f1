"""``nalign report`` from short real runs: every figure a valid PNG, the HTML self-contained."""

from __future__ import annotations

import json
import re

import matplotlib.image
import pytest
import torch

from neural_alignment.cli import main
from neural_alignment.core.metrics import angle_degrees

FEW = [
    "data.train_limit=256",
    "data.test_limit=64",
    "data.batch_size=32",
    "model.options.hidden=[16,16]",
    "train.steps=9",
    "train.metrics_every=3",
    "train.eval_every=3",
    "train.progress=false",
    "log.loggers=[jsonl]",
]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def compare_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "cmp"
    assert main(["compare", "digits-mlp", "--rules", "bp,sa", *FEW, "--out", str(out)]) == 0
    return out


def check_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG and len(data) > 1000, path
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image[..., :3].std() > 0.02, path


def test_report_of_a_compare_folder(compare_dir, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["report", str(compare_dir), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    names = ["curves.png", "alignment.png", "layers-bp.png", "layers-sa.png", "weights-sa.png"]  # bp: B is W
    assert sorted(p.name for p in out.glob("*.png")) == sorted(names)
    for name in names:
        assert str(out / name) in printed
        check_png(out / name)
    page = (out / "index.html").read_text()
    sources = re.findall(r'(?:src|href)\s*=\s*["\']?([^"\' >]+)', page, flags=re.I)
    assert len(sources) == len(names) and all(s.startswith("data:image/png;base64,") for s in sources)
    assert not re.search(r"url\(|@import|<link|<script", page, flags=re.I)
    assert ">bp<" in page and ">sa<" in page
    assert "bp has no separate backward weights (B is W), so no W-versus-B scatter" in page


def test_report_replaces_an_earlier_report_and_refuses_any_other_folder(compare_dir, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["report", str(compare_dir / "sa"), "--out", str(out)]) == 0
    (out / "notes.txt").write_text("mine")
    assert main(["report", str(compare_dir / "bp"), "--out", str(out)]) == 0
    assert "bp" in (out / "index.html").read_text() and (out / "notes.txt").read_text() == "mine"
    capsys.readouterr()
    for target, message in [
        (compare_dir, "holds files that are not an earlier nalign report"),
        (compare_dir / "sa" / "metrics.jsonl", "is a file"),
        (compare_dir / "sa" / "metrics.jsonl" / "r", "cannot create report folder"),
    ]:
        kept = target if target.exists() else target.parent
        before = {p: p.read_bytes() for p in kept.rglob("*") if p.is_file()} if kept.is_dir() else kept.read_bytes()
        assert main(["report", str(compare_dir / "sa"), "--out", str(target)]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
        after = {p: p.read_bytes() for p in kept.rglob("*") if p.is_file()} if kept.is_dir() else kept.read_bytes()
        assert after == before


def test_report_figures_show_what_the_runs_logged(compare_dir):
    from neural_alignment.analysis.report import layers_figure, weights_figure
    from neural_alignment.analysis.runs import load_runs

    bp, sa = load_runs([compare_dir])
    assert (bp.label, sa.label) == ("bp", "sa") and sa.layers() == ["1", "3", "5"]
    panels = layers_figure(sa).axes[:3]
    drawn = {line.get_label(): list(line.get_ydata()) for line in panels[1].lines}  # gradient angle
    assert drawn["3"] == sa.series("grad_angle/3")[1] and len(drawn) == 3
    assert sa.snapshot_steps() == [0, 3, 6, 9]
    # the weight-angle curves start at step 0, where the first snapshot is (the initial W and B)
    angles = panels[0]
    assert all(list(line.get_xdata())[:2] == [0, 3] for line in angles.lines) and len(angles.lines) == 3
    pairs = torch.from_numpy(sa.snapshot(0)["1"])  # every (W, B) entry of layer 1
    first = {line.get_label(): line.get_ydata()[0] for line in angles.lines}
    assert first["1"] == pytest.approx(angle_degrees(pairs[:, 0], pairs[:, 1]), abs=1e-3)
    scatter = weights_figure(sa, ["1"], [0, 9]).axes
    (points,) = scatter[1].collections
    assert len(points.get_offsets()) == 16 * 64  # every entry of the 16 x 64 layer (under 2,000)
    (bp_points,) = weights_figure(bp, ["5"], [9]).axes[0].collections
    assert max(abs(x - y) for x, y in bp_points.get_offsets()) < 1e-6  # bp: B is W


def test_several_runs_overlaid_and_layer_step_choice(compare_dir, tmp_path):
    out = tmp_path / "two"
    assert (
        main(
            [
                "report",
                str(compare_dir / "sa"),
                str(compare_dir / "bp"),
                "--out",
                str(out),
                "--layers",
                "1,5",
                "--steps",
                "3,9",
            ]
        )
        == 0
    )
    assert (out / "weights-sa.png").exists() and (out / "index.html").exists()
    from neural_alignment.analysis.report import alignment_figure
    from neural_alignment.analysis.runs import load_runs

    axes = alignment_figure(load_runs([compare_dir / "sa", compare_dir / "bp"])).axes
    assert [line.get_label() for line in axes[1].lines] == ["sa", "bp"]


def test_a_run_without_snapshots_gets_a_note(compare_dir, tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    rows = [json.loads(line) for line in (compare_dir / "bp" / "metrics.jsonl").read_text().splitlines()]
    (old / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert main(["report", str(old), "--out", str(tmp_path / "r")]) == 0
    assert "no weight snapshots" in (tmp_path / "r" / "index.html").read_text()
    assert not (tmp_path / "r" / "weights-old.png").exists()


@pytest.mark.parametrize(
    "make, extra, message",
    [
        (lambda p: p.mkdir(), [], "is not a run folder (no metrics.jsonl) nor a 'nalign compare' output folder"),
        (lambda p: None, [], "does not exist"),
        (lambda p: (p.mkdir(), (p / "metrics.jsonl").write_text("")), [], "holds no records"),
        (None, ["--layers", "9"], "no weight snapshots of layer(s) 9; layers: 1, 3, 5"),
        (None, ["--steps", "4"], "no weight snapshot at step(s) 4; snapshot steps: 0, 3, 6, 9"),
    ],
)
def test_bad_folders_and_choices_are_one_line_errors(compare_dir, tmp_path, capsys, make, extra, message):
    target = tmp_path / "x"
    if make is None:
        target = compare_dir / "sa"
    else:
        make(target)
    assert main(["report", str(target), *extra, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def outside(figure):
    """The drawn parts (each panel with its title, labels and tick labels; the suptitle) not inside the figure."""
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    box = figure.bbox
    parts = [(f"panel {i} ({ax.get_title()!r})", ax.get_tightbbox(renderer)) for i, ax in enumerate(figure.axes)]
    if figure.get_suptitle():
        parts.append((figure.get_suptitle(), figure._suptitle.get_window_extent(renderer)))
    return [
        name
        for name, e in parts
        if e.x0 < box.x0 - 0.5 or e.y0 < box.y0 - 0.5 or e.x1 > box.x1 + 0.5 or e.y1 > box.y1 + 0.5
    ]


def test_no_title_or_label_is_clipped(compare_dir):
    import dataclasses

    from neural_alignment.analysis.report import alignment_figure, curves_figure, layers_figure, weights_figure
    from neural_alignment.analysis.runs import load_runs

    bp, sa = load_runs([compare_dir])
    long = dataclasses.replace(sa, label="sa seed=1 train.lr=0.05 model.options.hidden=[16,16]")
    figures = {
        "curves": curves_figure([bp, long]),
        "alignment": alignment_figure([bp, long]),
        "layers": layers_figure(long),
        "weights, one step": weights_figure(long, ["1"], [9]),
        "weights, 3 x 3": weights_figure(sa, ["1", "3", "5"], [0, 3, 9]),
    }
    assert {name: outside(figure) for name, figure in figures.items()} == {name: [] for name in figures}


def test_seeds_of_a_grid_cell_are_drawn_as_their_mean_and_spread(tmp_path):
    from neural_alignment.analysis.report import seed_groups, spread_figure
    from neural_alignment.analysis.runs import load_runs

    grid = tmp_path / "grid"
    assert main(["compare", "digits-mlp", "--rules", "bp,sa", "--seeds", "3", *FEW, "--out", str(grid)]) == 0
    runs = load_runs([grid])
    groups = seed_groups(runs)
    assert list(groups) == ["bp", "sa"] and [run.label for run in groups["sa"]] == ["sa seed0", "sa seed1", "sa seed2"]
    angles = spread_figure("sa", groups["sa"]).axes[0]  # weight angle, one line and one band per layer
    line = next(line for line in angles.lines if line.get_label() == "3")
    per_seed = [run.series("angle/3")[1] for run in groups["sa"]]
    assert list(line.get_xdata()) == [0, 3, 6, 9]
    assert list(line.get_ydata()) == pytest.approx([sum(v) / 3 for v in zip(*per_seed, strict=True)])
    band = angles.collections[1].get_paths()[0].vertices[:, 1]  # layer "3"'s band: its lowest and highest seed
    assert min(band) == pytest.approx(min(min(v) for v in per_seed))
    assert max(band) == pytest.approx(max(max(v) for v in per_seed))
    out = tmp_path / "report"
    assert main(["report", str(grid), "--out", str(out)]) == 0
    check_png(out / "spread-sa.png")
    check_png(out / "spread-bp.png")
    # a run a later comparison into the folder no longer lists keeps its grid label
    listing = json.loads((grid / "comparison.json").read_text())
    listing["runs"] = [run for run in listing["runs"] if run["seed"] != 2]
    (grid / "comparison.json").write_text(json.dumps(listing))
    (unlisted,) = load_runs([grid / "sa" / "seed2"])
    assert unlisted.label == "sa seed2"
