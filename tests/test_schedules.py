"""Each schedule kind gives the documented value at chosen epochs; bad config is a UserError."""

import math

import pytest

from neural_alignment.core.errors import UserError
from neural_alignment.core.schedules import make_schedule


@pytest.mark.parametrize("cfg", [None, "constant", {"kind": "constant"}, {}])
def test_constant_default_is_one(cfg):
    s = make_schedule(cfg)
    assert [s(e) for e in (0.0, 0.5, 7.0, 1e6)] == [1.0] * 4


def test_constant_value():
    assert make_schedule({"kind": "constant", "value": 0.25})(3.3) == 0.25


def test_window_is_on_inside_half_open_interval():
    s = make_schedule({"kind": "window", "start": 2, "end": 5})
    assert [s(e) for e in (0, 1.99, 2, 3.5, 4.999, 5, 9)] == [0, 0, 1, 1, 1, 0, 0]


def test_window_without_end_stays_on():
    s = make_schedule({"kind": "window", "start": 1})
    assert (s(0.5), s(1), s(1e9)) == (0.0, 1.0, 1.0)


def test_linear_interpolates_and_clamps():
    s = make_schedule({"kind": "linear", "start": 2, "end": 6, "from_value": 1.0, "to_value": 3.0})
    assert s(0) == 1.0 and s(2) == 1.0
    assert s(3) == pytest.approx(1.5)
    assert s(5.5) == pytest.approx(2.75)
    assert s(6) == 3.0 and s(100) == 3.0


def test_exponential():
    s = make_schedule({"kind": "exponential", "rate": 0.5, "start": 1})
    assert s(0) == 1.0 and s(1) == 1.0
    assert s(3) == pytest.approx(0.25)
    assert s(2.5) == pytest.approx(0.5**1.5)


def test_cyclic_triangle():
    s = make_schedule({"kind": "cyclic", "period": 4, "low": 1.0, "high": 3.0})
    expected = {0: 1.0, 1: 2.0, 2: 3.0, 3: 2.0, 4: 1.0, 5: 2.0, 6.5: 2.5}
    for epoch, value in expected.items():
        assert s(epoch) == pytest.approx(value), epoch


def test_step_warmup_then_drops():
    s = make_schedule({"kind": "step", "warmup_epochs": 5, "drops": [30, 60]})
    assert s(0) == 0.0
    assert s(2.5) == pytest.approx(0.5)
    assert s(5) == 1.0 and s(29.9) == 1.0
    assert s(30) == pytest.approx(0.1)
    assert s(61) == pytest.approx(0.01)


def test_step_warmup_from_and_factor():
    s = make_schedule({"kind": "step", "warmup_epochs": 4, "warmup_from": 0.2, "drops": [10], "factor": 0.5})
    assert s(0) == pytest.approx(0.2)
    assert s(2) == pytest.approx(0.6)
    assert s(10) == pytest.approx(0.5)


def test_step_without_warmup():
    s = make_schedule({"kind": "step", "drops": [1]})
    assert (s(0), s(1)) == (1.0, pytest.approx(0.1))


def test_step_before_epoch_zero():
    # a component delayed by delay_epochs reads its schedule at negative epochs
    assert make_schedule({"kind": "step"})(-0.5) == 1.0
    assert make_schedule({"kind": "step", "warmup_epochs": 2, "warmup_from": 0.3})(-1.0) == pytest.approx(0.3)


def test_list_multiplies():
    s = make_schedule([{"kind": "window", "start": 1, "end": 3}, {"kind": "constant", "value": 4}])
    assert (s(0), s(2)) == (0.0, 4.0)


def test_callable_passes_through():
    f = lambda epoch: 2 * epoch  # noqa: E731
    assert make_schedule(f) is f


def test_unknown_kind_names_it_and_lists_valid():
    with pytest.raises(UserError, match=r"'wave'.*window.*cyclic"):
        make_schedule({"kind": "wave"})


def test_unknown_key_names_it_and_lists_valid():
    with pytest.raises(UserError, match=r"'stop'.*start.*end"):
        make_schedule({"kind": "window", "start": 0, "stop": 3})


@pytest.mark.parametrize(
    "cfg",
    [{"kind": "linear", "start": 3, "end": 3}, {"kind": "cyclic", "period": 0}],
)
def test_degenerate_config_is_user_error(cfg):
    with pytest.raises(UserError):
        make_schedule(cfg)


def test_values_are_python_floats():
    for cfg in ["constant", {"kind": "exponential", "rate": 0.9}, {"kind": "step", "drops": [1]}]:
        assert isinstance(make_schedule(cfg)(1.5), float)
    assert math.isfinite(make_schedule({"kind": "exponential", "rate": 0.9})(1000.0))


@pytest.mark.parametrize(
    "cfg, message",
    [
        ({"kind": "step", "drops": 30}, "'drops' must be a list of epochs"),
        ({"kind": "step", "drops": [30, "sixty"]}, "'drops' must be a list of epochs"),
        ({"kind": "window", "start": "1"}, "'start' must be a number"),
        ({"kind": "linear", "start": 0, "end": 1, "to_value": True}, "'to_value' must be a number"),
        ({"kind": "exponential", "rate": -0.5}, "rate > 0"),
    ],
)
def test_bad_values_are_user_errors_naming_the_key(cfg, message):
    with pytest.raises(UserError, match=message):
        make_schedule(cfg)


def test_last_change_and_the_warnings_of_a_run_whose_length_train_steps_sets():
    from neural_alignment.core.schedules import last_change, make_schedule
    from neural_alignment.recipes.loader import load_recipe
    from neural_alignment.training.build import schedule_warnings

    assert last_change(make_schedule({"kind": "step", "warmup_epochs": 2, "drops": [30, 60]})) == 60
    assert last_change(make_schedule({"kind": "linear", "start": 5, "end": 20})) == 20
    assert last_change(make_schedule([{"kind": "window", "end": 7}, "constant"])) == 7
    assert last_change(make_schedule({"kind": "cyclic"})) is None and last_change(make_schedule(None)) is None
    # digits-mlp's schedules go linearly from epoch 5 to 20 (to 0.05x)
    cut = schedule_warnings(load_recipe("digits-mlp", ["train.steps=200"]), 22, 200)  # 9.09 epochs
    assert len(cut) == 2 and cut[0].startswith("optim.task.schedule changes until epoch 20") and "9.09 epochs" in cut[0]
    early = schedule_warnings(load_recipe("digits-mlp", ["train.steps=100"]), 1, 100)  # 100 epochs: settles at 20
    assert len(early) == 2 and "settles at 0.05x after epoch 20" in early[1] and early[1].startswith("optim.alignment")
    assert schedule_warnings(load_recipe("digits-mlp", ["train.steps=600"]), 22, 600) == []  # 27 epochs: fits
    assert schedule_warnings(load_recipe("digits-mlp"), 22, 440) == []  # a length in epochs: the schedules' own unit
