"""analysis.figures: the comparison PNG and the data drawn in it."""

from __future__ import annotations

import matplotlib.image
import pytest

from neural_alignment.analysis.figures import comparison_figure, plot_comparison

HISTORIES = {
    "bp": [
        {"step": 0, "loss": 2.3},
        {"step": 100, "test_acc": 0.8, "mean_weight_angle": 0.0},
        {"step": 200, "test_acc": 0.85, "mean_weight_angle": 0.0},
    ],
    "fa": [{"step": 100, "test_acc": 0.7, "mean_weight_angle": 60.0}, {"step": 200, "test_acc": 0.75}],
    "kp": [{"step": 100, "test_acc": 0.78}],
}


def test_plot_comparison_writes_a_png(tmp_path):
    path = plot_comparison(HISTORIES, tmp_path / "figs" / "compare.png")
    assert path == tmp_path / "figs" / "compare.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(path)
    assert image.shape == (480, 1200, 4)  # 10 x 4 inches at 120 dpi
    assert image[..., :3].std() > 0.05  # something is drawn


def test_comparison_figure_draws_one_line_per_rule_skipping_missing_keys():
    accuracy, angle = comparison_figure(HISTORIES).axes
    drawn = {
        ax: {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in ax.lines}
        for ax in (accuracy, angle)
    }
    assert drawn[accuracy] == {"bp": ([100, 200], [0.8, 0.85]), "fa": ([100, 200], [0.7, 0.75]), "kp": ([100], [0.78])}
    assert drawn[angle] == {"bp": ([100, 200], [0.0, 0.0]), "fa": ([100], [60.0])}  # kp logged no angle
    assert accuracy.get_ylabel() == "test accuracy" and "angle" in angle.get_ylabel()
    colours = {ax: {line.get_label(): line.get_color() for line in ax.lines} for ax in (accuracy, angle)}
    assert colours[angle]["fa"] == colours[accuracy]["fa"] != colours[accuracy]["bp"]


def test_empty_histories_still_make_a_figure(tmp_path):
    assert plot_comparison({}, tmp_path / "empty.png").read_bytes()[:4] == b"\x89PNG"


def test_grid_figure_draws_each_rule_against_the_value_with_its_error_bars():
    from neural_alignment.analysis.figures import grid_figure

    rows = [
        {"rule": "bp", "value": "1", "test_acc": 0.8, "test_acc_sem": 0.01, "mean_weight_angle": 0.0},
        {"rule": "bp", "value": "4", "test_acc": 0.7, "test_acc_sem": 0.02, "mean_weight_angle": 0.0},
        {"rule": "fa", "value": "4", "test_acc": 0.6, "test_acc_sem": None, "mean_weight_angle": 90.0},
    ]
    accuracy, _angle = grid_figure(rows, "depth").axes
    bp, fa = accuracy.containers  # one errorbar container per rule
    assert [bp.get_label(), fa.get_label()] == ["bp", "fa"]
    assert list(bp.lines[0].get_xdata()) == [0, 1] and list(bp.lines[0].get_ydata()) == [0.8, 0.7]
    assert list(fa.lines[0].get_xdata()) == [1] and list(fa.lines[0].get_ydata()) == [0.6]  # at its value's position
    bars = [seg[:, 1] for seg in bp.lines[2][0].get_segments()]  # bp's error bars: mean ± sem
    assert [list(b) for b in bars] == [pytest.approx([0.79, 0.81]), pytest.approx([0.68, 0.72])]
    assert [t.get_text() for t in accuracy.get_xticklabels()] == ["1", "4"] and accuracy.get_xlabel() == "depth"
