"""The paper's recipes against the appendix: Table 5's four columns (B.1), Table 4's set-up (B.2),
noisy updates (B.3) and Kolen-Pollack (D.3). The expected numbers are transcribed here from
shared/paper/appendix.txt and table5.md, independently of the YAML files."""

from functools import cache

import pytest
from omegaconf import OmegaConf

from neural_alignment.api import get_rule
from neural_alignment.core.rules import FLAG_NAMES
from neural_alignment.recipes.loader import load_recipe
from neural_alignment.registry import get_registry
from neural_alignment.runtime.optim import make_lr_schedule
from neural_alignment.training.build import rule_options

T, F = True, False
FLAG_ROWS = (
    "fo_bias",
    "fo_relu",
    "fo_bwmc",
    "fo_fwmc",
    "fo_fwl2n",
    "bo_bias",
    "bo_relu",
    "bo_fwmc",
    "bo_fwl2n",
    "bi_bwmc",
    "bi_fwmc",
    "bi_fwl2n",
)  # Table 5's row order
# column: alternating, delay, batch, SGDM lr, alignment optimizer, eta, sigma, alpha/beta, beta, gamma, flags
TABLE5 = {
    "imagenet-resnet18-wm-tpe": (
        T,
        2,
        2048,
        1.0,
        "gd",
        1.0,
        0.6905,
        15.6607,
        0.0283,
        None,
        (T, T, T, F, F, F, F, F, F, T, F, F),
    ),
    "imagenet-resnet18-wm-tpe-ad": (
        T,
        0,
        256,
        0.125,
        "adam",
        0.0053,
        0.9500,
        13.9040,
        2.8109e-8,
        None,
        (T, T, T, F, F, F, F, F, F, T, F, F),
    ),
    "imagenet-resnet18-wm-tpe-ad-ops": (
        T,
        0,
        256,
        0.125,
        "adam",
        0.0025,
        0.6402,
        0.1344,
        232.7856,
        None,
        (T, T, T, T, F, F, T, F, T, T, F, F),
    ),
    "imagenet-resnet18-ia-tpe": (
        T,
        1,
        256,
        0.125,
        "adam",
        0.0098,
        0.8176,
        129.1123,
        7.9990,
        3.1610e-6,
        (T, T, T, T, F, T, F, T, T, F, F, F),
    ),
}


@cache
def recipe_named(name):
    """Each recipe is loaded once here (loading merges several files; the tests only read it)."""
    return load_recipe(name)


def rule_of(recipe):
    return get_rule(recipe.rule.name, **rule_options(recipe.rule))


def lr_at(component, recipe, epoch, shift=0.0):
    """The component's lr at ``epoch`` (one step per epoch), as the trainer builds it."""
    schedule = OmegaConf.to_container(component.schedule) if component.schedule is not None else None
    lr = make_lr_schedule(component.lr, schedule, 1, recipe.data.batch_size, component.rescale_lr, shift)
    return lr(epoch)


@pytest.mark.parametrize("name", TABLE5)
def test_table5_columns(name):
    alternating, delay, batch, lr, optimizer, eta, sigma, ratio, beta, gamma, flags = TABLE5[name]
    recipe = recipe_named(name)
    rule = rule_of(recipe)
    expected = {"amp": pytest.approx(ratio * beta, rel=1e-9), "decay": beta}
    if gamma is not None:
        expected["null"] = gamma
    assert rule.name == ("ia" if gamma is not None else "wm")
    assert rule.weights == expected
    assert rule.noise_std == sigma
    assert {f: getattr(rule.flags, f) for f in FLAG_ROWS} == dict(zip(FLAG_ROWS, flags, strict=True))
    assert set(FLAG_ROWS) == set(FLAG_NAMES)
    t, o = recipe.train, recipe.optim
    assert (t.alternating, t.delay_epochs, recipe.data.batch_size) == (alternating, delay, batch)
    assert (o.task.name, o.task.momentum, o.alignment.name) == ("nesterov", 0.9, optimizer)
    # B.1.2: J's lr is |B|/2048, warmed up for 6 epochs (after the delay), x0.1 at 30/60/80 (+ delay), 100 epochs
    assert lr == batch / 2048
    assert lr_at(o.task, recipe, delay + 6, shift=delay) == pytest.approx(lr)
    assert lr_at(o.task, recipe, delay + 3, shift=delay) == pytest.approx(lr / 2)
    for k, drop in enumerate((30, 60, 80)):
        for component, shift in ((o.task, delay), (o.alignment, 0.0)):  # R's lr drops with J's
            assert lr_at(component, recipe, drop + delay - 0.5, shift) == pytest.approx(
                (lr if component is o.task else eta) * 0.1**k
            )
            assert lr_at(component, recipe, drop + delay, shift) == pytest.approx(
                (lr if component is o.task else eta) * 0.1 ** (k + 1)
            )
    # R's lr warms up for 6 epochs only without a delay
    assert lr_at(o.alignment, recipe, 3) == pytest.approx(eta / 2 if delay == 0 else eta)
    assert t.epochs == 100 and t.model_l2 == 1e-4 and recipe.model.arch == "resnet18"


B2 = {"bp": {}, "fa": {}, "sa": {"decay": 1e-3, "self": 2e-3}, "aa": {"sparse": 1e-3, "amp": 2e-3}}


@pytest.mark.parametrize("rule", ["bp", "fa", "sa", "aa", "kp", "wm", "ia"])
def test_b2_setup(rule):
    recipe = recipe_named(f"imagenet-resnet18-{rule}")
    o = recipe.optim
    assert recipe.rule.name == rule and recipe.data.batch_size == 256 and recipe.train.epochs == 90
    assert (o.task.name, o.task.momentum, o.task.lr) == ("nesterov", 0.9, 0.1)
    assert [lr_at(o.task, recipe, e) for e in (2.5, 5, 29.9, 30, 60, 80)] == pytest.approx(
        [0.05, 0.1, 0.1, 0.01, 0.001, 0.0001]
    )
    if rule != "kp":
        assert (o.alignment.name, o.alignment.lr) == ("adam", 0.001)


@pytest.mark.parametrize("rule", ["sa", "aa"])
def test_b2_sa_aa_weights_and_paths(rule):
    built = rule_of(recipe_named(f"imagenet-resnet18-{rule}"))
    assert built.weights == B2[rule]
    assert built.flags.fo_bias and built.flags.bo_bias and not built.flags.fo_relu and not built.flags.bo_relu


def test_defaults_recipes_are_the_rules_defaults():
    assert rule_of(recipe_named("imagenet-resnet18-wm")).weights == {"amp": 1e-3, "decay": 1e-3}
    assert rule_of(recipe_named("imagenet-resnet18-ia")).weights == {"amp": 2e-3, "null": 1e-3, "decay": 1e-3}


def test_d3_kolen_pollack_updates_b_with_ws_optimizer():
    recipe = recipe_named("imagenet-resnet18-kp")
    rule = rule_of(recipe)
    # dB = -eta x r^T - lambda B with W's eta; lambda matches the L2 1e-4 on W: 2 * decay = model_l2
    assert rule.weights == {"angle": 1.0, "decay": 5e-5} and 2 * rule.weights["decay"] == recipe.train.model_l2
    task, alignment = recipe.optim.task, recipe.optim.alignment
    assert {k: alignment[k] for k in ("name", "lr", "momentum", "schedule")} == {
        k: task[k] for k in ("name", "lr", "momentum", "schedule")
    }


@pytest.mark.parametrize(
    "rule, component", [("bp", "task"), ("sa", "alignment"), ("aa", "alignment"), ("kp", "alignment")]
)
def test_b3_noisy_updates(rule, component):
    recipe = recipe_named(f"imagenet-resnet18-{rule}-noisy")
    o = recipe.optim
    assert recipe.rule.name == rule and recipe.data.batch_size == 256
    # J: momentum optimizer, lr 0.1, drops at 30 and 60 only
    assert (o.task.name, o.task.lr, o.task.momentum) == ("sgd", 0.1, 0.9)
    assert [lr_at(o.task, recipe, e) for e in (29.9, 30, 60, 85)] == pytest.approx([0.1, 0.01, 0.001, 0.001])
    if rule in ("sa", "aa"):  # Adam 0.001 on R, drops at 30 and 60
        assert (o.alignment.name, o.alignment.lr) == ("adam", 0.001)
        assert [lr_at(o.alignment, recipe, e) for e in (0, 29.9, 30, 60, 85)] == pytest.approx(
            [0.001, 0.001, 1e-4, 1e-5, 1e-5]
        )
    # the noise goes where the readings put it: W's optimizer for bp, B's for sa, aa and kp
    assert o.task.noise.std == 0.0 and o.alignment.noise.std == 0.0  # the scale is an override:
    noisy = load_recipe(f"imagenet-resnet18-{rule}-noisy", [f"optim.{component}.noise.std=0.01"]).optim
    other = "alignment" if component == "task" else "task"
    assert noisy[component].noise.std == 0.01 and noisy[other].noise.std == 0.0


@pytest.mark.parametrize("arch", ["resnet50", "resnet152_v2"])
def test_other_depths_and_v2_by_override(arch):
    recipe = load_recipe("imagenet-resnet18-ia-tpe", [f"model.arch={arch}"])
    assert recipe.model.arch == arch and arch in get_registry().catalog("architectures").names()
