"""Search spaces: the four of the appendix (B.1.1 to B.1.4) and their Fashion-MNIST versions sample
inside the appendix's ranges, on the appendix's scale; bad entries are user errors naming them."""

import math
from functools import cache

import numpy as np
import pytest
from hyperopt.pyll import stochastic
from omegaconf import OmegaConf

from neural_alignment.core.errors import UserError
from neural_alignment.recipes.loader import load_recipe
from neural_alignment.search.space import categorical_keys, hyperopt_space, resolve

FLAGS = [
    "fo_bias",
    "bo_bias",
    "fo_relu",
    "bo_relu",
    "fo_bwmc",
    "bi_bwmc",
    "fo_fwmc",
    "bo_fwmc",
    "fo_fwl2n",
    "bo_fwl2n",
    "bi_fwmc",
    "bi_fwl2n",
]
# transcribed from appendix.txt: key -> (scale, low, high) or ("choice", values)
B11 = {
    "rule.noise_std": ("uniform", 1e-10, 1.0),
    "rule.weights.amp/rule.weights.decay": ("uniform", 0.1, 200.0),
    "rule.weights.decay": ("log", 1e-11, 1e7),
}
B12 = {
    **B11,
    "data.batch_size": ("choice", {256, 1024, 2048, 4096}),
    "optim.alignment.lr": ("log", 1e-6, 1e-2),
    "delay": ("choice", {0, 1, 2}),
    "train.alternating": ("choice", {False, True}),
}
B13 = {**B12, **{f"rule.flags.{f}": ("choice", {False, True}) for f in FLAGS}}
B14 = {**B13, "rule.weights.null": ("log", 1e-11, 1e7)}
SPACES = {"search-wm": B11, "search-wm-ad": B12, "search-wm-ad-ops": B13, "search-ia": B14}
FMNIST = {
    "search-fmnist-wm": {**B13, "data.batch_size": ("choice", {32, 128, 256, 512})},
    "search-fmnist-ia": {**B14, "data.batch_size": ("choice", {32, 128, 256, 512})},
    "search-fmnist-wm-deep": {**B13, "data.batch_size": ("choice", {32, 128, 256, 512})},
}
DRAWS = 200


@cache
def samples(name):
    recipe = load_recipe(name)
    space = OmegaConf.to_container(recipe.search.space)
    rng = np.random.default_rng(0)
    expr = hyperopt_space(space)
    return recipe, space, [resolve(space, stochastic.sample(expr, rng=rng)) for _ in range(DRAWS)]


def check_ranges(values, expected):
    assert set(values) == set(expected)
    for key, (scale, *bounds) in expected.items():
        drawn = values[key]
        if scale == "choice":
            assert set(drawn) == bounds[0], key  # every option is drawn, nothing else
            continue
        low, high = bounds
        assert all(low <= v <= high for v in drawn), key
        # on a log scale half the draws fall below the geometric midpoint; on a linear one almost none do
        below = np.mean(np.array(drawn) < math.sqrt(low * high))
        assert (0.4 < below < 0.6) if scale == "log" else below < 0.05, (key, below)


@pytest.mark.parametrize("name", [*SPACES, *FMNIST])
def test_samples_fall_in_the_appendix_ranges(name):
    recipe, _space, drawn = samples(name)
    expected = {**SPACES, **FMNIST}[name]
    check_ranges({key: [s.values[key] for s in drawn] for key in drawn[0].values}, expected)
    for s in drawn:  # P_amp's weight is (alpha/beta) * beta
        assert s.overrides["rule.weights.amp"] == pytest.approx(
            s.values["rule.weights.amp/rule.weights.decay"] * s.values["rule.weights.decay"]
        )
    assert recipe.rule.name == ("ia" if "ia" in name else "wm")
    assert recipe.search.metric.startswith("val_") and recipe.data.val_split is not None


@pytest.mark.parametrize("name", ["search-wm-ad", "search-fmnist-wm"])
def test_delay_branches_shift_the_alignment_drops_or_warm_up(name):
    recipe, _, drawn = samples(name)
    task_drops = list(recipe.optim.task.schedule.drops)
    for s in drawn[:40]:
        delay, schedule = s.overrides["train.delay_epochs"], s.overrides["optim.alignment.schedule"]
        assert schedule["drops"] == pytest.approx([d + delay for d in task_drops], abs=1e-3)
        assert schedule["warmup_epochs"] == (recipe.optim.task.schedule.warmup_epochs if delay == 0 else 0)


def test_search_recipes_fix_b1_settings():
    for name in SPACES:
        recipe = samples(name)[0]
        assert recipe.model.arch == "resnet18" and recipe.train.model_l2 == 1e-4 and recipe.train.epochs == 45
    ad = samples("search-wm-ad")[0]
    # J's lr = |B|/2048 for every batch: 0.125 * |B|/256
    assert ad.optim.task.rescale_lr and ad.optim.task.lr * 2048 / 256 == 1.0 and ad.optim.alignment.name == "adam"


def test_a_sample_is_a_valid_recipe():
    _recipe, _space, drawn = samples("search-fmnist-ia")
    from neural_alignment.search.trials import override

    loaded = load_recipe("search-fmnist-ia", [override(k, v) for k, v in drawn[0].overrides.items()])
    assert loaded.rule.weights["null"] == drawn[0].overrides["rule.weights.null"]
    assert loaded.optim.alignment.schedule == drawn[0].overrides["optim.alignment.schedule"]


def test_categorical_keys_include_branches():
    _, space, _ = samples("search-wm-ad")
    assert set(categorical_keys(space)) == {"data.batch_size", "train.alternating", "delay"}


def test_quniform_whole_numbers_and_nested_distributions():
    space = {
        "data.batch_size": {"dist": "quniform", "low": 16, "high": 64, "q": 16},
        "opt": {
            "dist": "choice",
            "options": [
                {"optim.task.name": "sgd"},
                {"optim.task.name": "adam", "optim.task.lr": {"dist": "loguniform", "low": 1e-4, "high": 1e-2}},
            ],
        },
    }
    rng = np.random.default_rng(1)
    drawn = [resolve(space, stochastic.sample(hyperopt_space(space), rng=rng)) for _ in range(50)]
    assert {s.overrides["data.batch_size"] for s in drawn} <= {16, 32, 48, 64}
    assert all(isinstance(s.overrides["data.batch_size"], int) for s in drawn)
    for s in drawn:  # the nested lr is drawn only in the adam branch
        assert ("optim.task.lr" in s.overrides) == (s.overrides["optim.task.name"] == "adam") == (s.values["opt"] == 1)
        assert 1e-4 <= s.overrides.get("optim.task.lr", 1e-3) <= 1e-2


@pytest.mark.parametrize(
    "space, named",
    [
        ({"rule.noise_std": {"dist": "gaussian", "low": 0, "high": 1}}, "unknown dist"),
        ({"rule.noise_std": {"dist": "uniform", "low": 1}}, "missing ['high']"),
        ({"rule.noise_std": {"dist": "uniform", "low": 1, "high": 0}}, "low < high"),
        ({"rule.weights.decay": {"dist": "loguniform", "low": 0, "high": 1}}, "low > 0"),
        ({"rule.noise_std": 0.5}, "needs a distribution"),
        ({"delay": {"dist": "choice", "options": [0, 1]}}, "conditional choice"),
        ({"rule.noise_std": {"dist": "choice", "options": []}}, "non-empty"),
        ({}, "non-empty mapping"),
    ],
)
def test_bad_entries_are_user_errors(space, named):
    with pytest.raises(UserError, match=r"search\.space") as info:
        hyperopt_space(space)
    assert named in str(info.value)
