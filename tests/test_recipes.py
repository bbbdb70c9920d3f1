"""Recipes: lookup by name in registered folders, base inheritance, overrides, validation, ``nalign show``."""

from pathlib import Path

import pytest
import yaml

from neural_alignment import hookimpl
from neural_alignment.cli import main
from neural_alignment.core.rules import RuleSpec
from neural_alignment.recipes.loader import RecipeError, load_recipe, recipe_files, to_yaml
from neural_alignment.registry import Registry, manager

BUILTIN = [
    "digits-mlp",
    "fmnist-mlp",
    "fmnist-convnet",
    "fmnist-vit",
    "imagenet-resnet18",
    "imagenet-resnet18-ia-tpe",
    "imagenet-resnet18-wm-tpe",
    "search-fmnist-wm",
]


@pytest.fixture
def recipe_dir(tmp_path, monkeypatch):
    """A folder of recipes registered by a throwaway plugin in a fresh process registry."""
    folder = tmp_path / "recipes"
    folder.mkdir()

    class _Plugin:
        @hookimpl
        def register_recipes(self, register):
            register("test-folder", folder)

        @hookimpl
        def register_rules(self, register):
            settings = {"optim": {"alignment": {"name": "gd", "lr": 25.0, "momentum": 0.0}}}
            register("shipped", RuleSpec("shipped", weights={"decay": 1e-3}, recipe=settings))

    monkeypatch.setattr(manager, "_default", Registry(autoload=False, extra_plugins=[_Plugin()]))
    return folder


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(text)
    return path


def test_builtin_recipes_are_registered_and_valid():
    files = recipe_files()
    for name in BUILTIN:
        assert name in files
        recipe = load_recipe(name)
        assert recipe.name == name


def test_base_inherits_recursively_and_child_wins(recipe_dir):
    write(recipe_dir, "grand", "train: {steps: 5, seed: 3}\nmodel: {arch: convnet, options: {width: 8}}\n")
    write(recipe_dir, "parent", "base: grand\ntrain: {steps: 7}\nmodel: {options: {depth: 2}}\n")
    write(recipe_dir, "child", "base: parent\nrule: {name: kp, weights: {decay: 0.5}}\n")
    recipe = load_recipe("child")
    assert recipe.name == "child" and recipe.base == "parent"
    assert recipe.train.steps == 7 and recipe.train.seed == 3
    assert recipe.model.arch == "convnet" and dict(recipe.model.options) == {"width": 8, "depth": 2}
    assert recipe.rule.name == "kp" and recipe.rule.weights == {"decay": 0.5}
    assert recipe.train.loss_rate == 1.0  # schema default fills what no file sets


def test_a_plugin_rule_s_recommended_settings_sit_below_by_rule_and_the_command_line(recipe_dir):
    write(recipe_dir, "r", "optim: {alignment: {name: adam, lr: 0.5}}\n")
    write(recipe_dir, "tuned", "base: r\nby_rule: {shipped: {optim: {alignment: {lr: 2.0}}}}\n")
    assert load_recipe("r", ["rule.name=sa"]).optim.alignment.lr == 0.5  # a rule shipping none: the recipe's
    shipped = load_recipe("r", ["rule.name=shipped"]).optim.alignment
    assert (shipped.name, shipped.lr, shipped.momentum) == ("gd", 25.0, 0.0)
    tuned = load_recipe("tuned", ["rule.name=shipped"]).optim.alignment
    assert (tuned.name, tuned.lr) == ("gd", 2.0)  # the recipe's by_rule entry wins over the rule's own
    assert load_recipe("tuned", ["rule.name=shipped", "optim.alignment.lr=3.0"]).optim.alignment.lr == 3.0


def test_overrides_apply_last_and_are_typed(recipe_dir):
    write(recipe_dir, "r", "train: {steps: 5}\n")
    recipe = load_recipe("r", ["train.steps=9", "rule.name=sa", "rule.weights.self=0.25", "train.topk=[1,3]"])
    assert recipe.train.steps == 9 and isinstance(recipe.train.steps, int)
    assert recipe.rule.name == "sa" and recipe.rule.weights["self"] == 0.25
    assert list(recipe.train.topk) == [1, 3]


def test_by_rule_applies_between_the_file_and_the_command_line(recipe_dir):
    write(recipe_dir, "r", "optim: {alignment: {lr: 0.5}}\nby_rule: {kp: {optim: {alignment: {name: sgd, lr: 0.1}}}}\n")
    assert load_recipe("r").optim.alignment.lr == 0.5
    kp = load_recipe("r", ["rule.name=kp"])
    assert kp.optim.alignment.name == "sgd" and kp.optim.alignment.lr == 0.1
    assert load_recipe("r", ["rule.name=kp", "optim.alignment.lr=0.2"]).optim.alignment.lr == 0.2


def test_unknown_key_names_full_path_and_valid_keys(recipe_dir):
    write(recipe_dir, "bad", "optim:\n  task: {lr: 0.1, momentom: 0.9}\n")
    with pytest.raises(RecipeError) as info:
        load_recipe("bad")
    message = str(info.value)
    assert "'optim.task.momentom'" in message and "momentum" in message and "bad.yaml" in message


def test_unknown_override_key_and_wrong_type(recipe_dir):
    write(recipe_dir, "r", "{}\n")
    with pytest.raises(RecipeError, match=r"unknown recipe key 'train\.stepz'.*steps"):
        load_recipe("r", ["train.stepz=3"])
    with pytest.raises(RecipeError, match=r"'train\.steps'.*Integer"):
        load_recipe("r", ["train.steps=many"])
    with pytest.raises(RecipeError, match=r"'rule\.weights\.decay'.*Float"):
        load_recipe("r", ["rule.weights.decay=lots"])
    with pytest.raises(RecipeError, match="key=value"):
        load_recipe("r", ["train.steps"])
    with pytest.raises(RecipeError, match=r"overrides \['train\.steps=x'\]"):  # any iterable, named in full
        load_recipe("r", (item for item in ["train.steps=x"]))


def test_unknown_base_and_cycle(recipe_dir):
    write(recipe_dir, "orphan", "base: nowhere\n")
    with pytest.raises(RecipeError, match=r"unknown recipe 'nowhere'.*base of recipe 'orphan'"):
        load_recipe("orphan")
    write(recipe_dir, "a", "base: b\n")
    write(recipe_dir, "b", "base: a\n")
    with pytest.raises(RecipeError, match="cycle: a -> b -> a"):
        load_recipe("a")


def test_unknown_recipe_suggests_close_name(recipe_dir):
    write(recipe_dir, "fmnist-thing", "{}\n")
    with pytest.raises(RecipeError, match="Did you mean 'fmnist-thing'"):
        load_recipe("fmnist-thin")


def test_yaml_path_works_as_name(tmp_path):
    path = write(tmp_path, "mine", "train: {steps: 11}\n")
    recipe = load_recipe(str(path))
    assert recipe.name == "mine" and recipe.train.steps == 11


def test_show_prints_resolved_yaml(capsys):
    assert main(["show", "digits-mlp", "rule.name=kp", "train.steps=3"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["rule"]["name"] == "kp" and shown["train"]["steps"] == 3
    assert shown == yaml.safe_load(to_yaml(load_recipe("digits-mlp", ["rule.name=kp", "train.steps=3"])))


def test_show_bad_key_exits_2_with_one_line(capsys):
    assert main(["show", "digits-mlp", "train.nope=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'train.nope'" in err


def test_table5_recipes_build_their_rules():
    from neural_alignment.api import get_rule
    from neural_alignment.training.build import rule_options

    ia = load_recipe("imagenet-resnet18-ia-tpe")
    rule = get_rule(ia.rule.name, **rule_options(ia.rule))
    assert rule.weights == {"amp": pytest.approx(129.1123 * 7.9990, rel=1e-7), "decay": 7.9990, "null": 3.1610e-6}
    assert rule.noise_std == 0.8176 and rule.flags.bo_fwl2n and not rule.flags.bi_bwmc
    assert ia.train.alternating and ia.train.delay_epochs == 1 and ia.optim.alignment.lr == 0.0098
    wm = load_recipe("imagenet-resnet18-wm-tpe")
    assert wm.data.batch_size == 2048 and wm.optim.alignment.name == "gd" and wm.optim.task.lr == 1.0


def test_show_without_name_lists_recipes(capsys):
    assert main(["show"]) == 0
    listed = dict(line.split("  ") for line in capsys.readouterr().out.splitlines())
    assert set(BUILTIN) <= set(listed) and listed["fmnist-convnet"].endswith("fmnist-convnet.yaml")


def test_a_schedule_of_another_kind_replaces_rather_than_merges(recipe_dir):
    write(recipe_dir, "base", "optim: {task: {schedule: {kind: step, warmup_epochs: 5, drops: [30]}}}\n")
    write(recipe_dir, "child", "base: base\noptim: {task: {schedule: {kind: step, drops: [10, 20]}}}\n")
    child = load_recipe("child")
    assert child.optim.task.schedule == {"kind": "step", "warmup_epochs": 5, "drops": [10, 20]}  # same kind merges
    linear = load_recipe("child", ["optim.task.schedule={kind: linear, start: 1, end: 2}"])
    assert linear.optim.task.schedule == {"kind": "linear", "start": 1, "end": 2}
    product = load_recipe("child", ["optim.task.schedule=[{kind: constant, value: 0.5}]"])
    assert list(product.optim.task.schedule) == [{"kind": "constant", "value": 0.5}]
    write(recipe_dir, "listed", "base: base\noptim: {task: {schedule: [{kind: constant}]}}\n")
    back = load_recipe("listed", ["optim.task.schedule={kind: window, start: 1}"])
    assert back.optim.task.schedule == {"kind": "window", "start": 1}


def test_a_bad_schedule_is_a_recipe_error_naming_its_key(recipe_dir):
    write(recipe_dir, "r", "optim: {task: {schedule: {kind: window, stop: 3}}}\n")
    with pytest.raises(RecipeError, match=r"'optim\.task\.schedule'.*unknown key 'stop'.*start, end"):
        load_recipe("r")
    write(recipe_dir, "ok", "{}\n")
    with pytest.raises(RecipeError, match=r"'rule\.schedules\.amp'.*end > start"):
        load_recipe("ok", ["rule.schedules={amp: {kind: linear, start: 2, end: 1}}"])


@pytest.mark.parametrize("name", ["fmnist-depth-converged", "fmnist-noisy-updates-converged", "fmnist-vit-converged"])
@pytest.mark.parametrize("rule", ["bp", "fa", "sa", "aa", "kp"])
def test_the_converged_recipes_train_the_whole_set_for_five_epochs_with_a_schedule_inside_them(name, rule):
    """Issue 19's converged grids: all 60,000 images, at least 5 epochs, test accuracy at every epoch
    end (60,000 // 128 = 468 steps), a checkpoint there, and every warm-up and drop inside the run."""
    recipe = load_recipe(name, [f"rule.name={rule}"])
    assert recipe.data.train_limit is None and recipe.data.val_split is None
    assert recipe.data.batch_size == 128 and recipe.train.steps is None and recipe.train.epochs >= 5
    assert recipe.train.eval_every == recipe.train.checkpoint_every == 60_000 // 128
    for optimizer in (recipe.optim.task, recipe.optim.alignment):
        if optimizer.schedule is not None and optimizer.schedule.kind == "step":
            assert 0 <= optimizer.schedule.warmup_epochs < min(optimizer.schedule.drops)
            assert max(optimizer.schedule.drops) < recipe.train.epochs


def test_the_converged_vit_is_fmnist_vit_with_its_per_rule_optimizers():
    for rule in ("sa", "kp"):
        short, converged = (load_recipe(n, [f"rule.name={rule}"]) for n in ("fmnist-vit", "fmnist-vit-converged"))
        assert converged.model == short.model and converged.rule == short.rule
        assert converged.optim.alignment.name == short.optim.alignment.name
        assert converged.optim.alignment.lr == short.optim.alignment.lr
