"""Appendix D.2: the two-layer flow read from real aligned layers equals eqs. (2)-(4), and its
Jacobian's eigenvalues on the hyperbola of minima equal D.2's table."""

from __future__ import annotations

import matplotlib.image
import numpy as np
import pytest

from neural_alignment.analysis import two_layer
from neural_alignment.cli import main

DATA = two_layer.ScalarData.sample(n=16, seed=3)
RATE = 500.0


def d2_flow(name, w1, w2, b, kappa=1.0):
    """D.2's eqs. (2)-(4) written out by hand (bp: b = w2)."""
    a, s = DATA.a, DATA.s
    error = a - w2 * w1 * s
    if name == "bp":
        return np.array([w2 * error, w1 * error])
    db = 0.0 if name == "fa" else kappa * (w2 - b)
    return np.array([b * error, w1 * error, db])


@pytest.mark.parametrize("name", ["bp", "fa", "sa"])
@pytest.mark.parametrize("state", [(0.3, -1.2, 0.7), (1.5, 0.4, -0.9), (-0.8, -0.6, 2.0)])
def test_layers_flow_equals_d2_equations(name, state):
    flow = two_layer.TwoLayerFlow(two_layer.registered_rule(name), DATA, RATE)
    state = state if flow.has_b else state[:2]
    # sa's default R = 1e-3 (w - b)^2: -rate dR/db = 2e-3 rate (w2 - b), kappa = 1 at rate 500
    np.testing.assert_allclose(flow(state), d2_flow(name, *state[:2], state[-1]), rtol=1e-10, atol=1e-12)


def on_hyperbola(name):
    points = two_layer.minima(DATA, [0.5, 1.0, -2.0, 3.0])
    if name == "fa":
        points += two_layer.minima(DATA, [0.5, -1.0, 2.0], b=-1.5) + two_layer.minima(DATA, [1.0], b=0.25)
    return points


@pytest.mark.parametrize("name", ["bp", "fa", "sa"])
def test_jacobian_eigenvalues_equal_d2_table(name):
    rule = two_layer.registered_rule(name)
    flow = two_layer.TwoLayerFlow(rule, DATA, RATE)
    for point in on_hyperbola(name):
        state = point if flow.has_b else point[:2]
        assert np.abs(flow(state)).max() < 1e-12  # a fixed point
        eigenvalues = np.sort(np.linalg.eigvals(flow.jacobian(state)).real)
        w1, w2, b = point
        expected = {
            "bp": [-(w1**2 + w2**2) * DATA.s, 0.0],
            "fa": [-(w1**2 + b * w2) * DATA.s, 0.0, 0.0],
            "sa": [-(w1**2 + w2**2) * DATA.s, 0.0, -1.0],
        }[name]
        np.testing.assert_allclose(eigenvalues, np.sort(expected), atol=1e-6)
        np.testing.assert_allclose(
            two_layer.closed_form_eigenvalues(rule, point, DATA, RATE), np.sort(expected), atol=1e-12
        )


def test_fa_minima_are_sinks_only_where_w1_squared_plus_b_w2_is_positive():
    points = two_layer.fixed_points(two_layer.registered_rule("fa"), DATA, RATE, w1s=[0.5, 2.0], fa_bs=[-1.0])
    kinds = {(round(p.state[0], 3), round(p.state[2], 3)): p.kind for p in points}
    ratio = DATA.a / DATA.s
    for (w1, b), kind in kinds.items():
        expected = "sink" if w1**2 + b * ratio / w1 > 0 else "source"
        assert kind == expected, (w1, b)
    assert "source" in kinds.values()


def test_kp_is_analysed_numerically_without_a_closed_form():
    points = two_layer.fixed_points(two_layer.registered_rule("kp"), DATA, 1.0, w1s=[1.0])
    assert points[0].closed_form is None and points[0].eigenvalues.shape == (3,)


def test_cli_prints_table_and_plot(tmp_path, capsys):
    png = tmp_path / "flows.png"
    assert main(["analyze", "d2", "--rule", "fa", "--rule", "sa", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "rule fa" in out and "rule sa" in out and "eigenvalues (D.2)" in out and "source" in out
    image = matplotlib.image.imread(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and image[..., :3].std() > 0.05


def test_cli_plot_never_replaces_a_file(tmp_path, capsys):
    png = tmp_path / "mine.png"
    png.write_bytes(b"a user's file")
    assert main(["analyze", "d2", "--rule", "bp", "--plot", str(png)]) == 2
    err = capsys.readouterr().err
    assert "--plot" in err and "already exists" in err and len(err.strip().splitlines()) == 1
    assert png.read_bytes() == b"a user's file"


def test_trajectories_reach_the_minima_and_sa_reaches_b_equal_w2():
    initial = np.array([[0.8, 0.6, -0.5]])
    ratio = DATA.a / DATA.s
    for name in ("bp", "sa"):
        (path,) = two_layer.trajectories(two_layer.registered_rule(name), DATA, initial, RATE, t_end=20.0, steps=400)
        w1, w2, b = path[-1]
        assert w1 * w2 == pytest.approx(ratio, rel=1e-3) and b == pytest.approx(w2, abs=1e-3)
    (fa,) = two_layer.trajectories(two_layer.registered_rule("fa"), DATA, initial, RATE, t_end=2.0, steps=40)
    assert np.all(fa[:, 2] == -0.5)  # fa's B does not move
