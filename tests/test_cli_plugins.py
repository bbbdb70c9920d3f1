"""The `nalign` command and plugins from really installed distributions.

The example plugins (examples/plugin-sign-symmetry, examples/plugin-direct-feedback) and two
fixture plugins (tests/plugins/) are
pip-installed into temporary targets; `nalign` runs as a subprocess with that target on
PYTHONPATH, so the plugins are found exactly as an installed plugin is: through the
`neural_alignment` entry-point group of a distribution's metadata.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
NALIGN = str(Path(sys.executable).with_name("nalign"))


def pip_install_to(target: Path, *projects: Path) -> Path:
    """pip-install ``projects`` into ``target``, each from a copy beside it: pip's build leaves
    ``build/`` and ``*.egg-info`` in the folder it builds, and an egg-info in an example's source
    folder (on pytest's pythonpath) would register its plugin in this process too, so the suite
    would collect other tests once it had run once."""
    copies = target.with_name(target.name + "-src")
    for project in projects:
        shutil.copytree(project, copies / project.name, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            *(str(copies / project.name) for project in projects),
        ],
        check=True,
    )
    return target


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory) -> Path:
    """The example plugins and a plugin that fails on import, installed side by side (once per module)."""
    return pip_install_to(
        tmp_path_factory.mktemp("site"),
        ROOT / "examples" / "plugin-sign-symmetry",
        ROOT / "examples" / "plugin-direct-feedback",
        ROOT / "tests" / "plugins" / "broken-plugin",
    )


@pytest.fixture(scope="module")
def clashing_site(tmp_path_factory) -> Path:
    return pip_install_to(tmp_path_factory.mktemp("clash"), ROOT / "tests" / "plugins" / "clashing-plugin")


def nalign(*args: str, site: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("NALIGN_")}
    environ.pop("PYTHONPATH", None)
    if site is not None:
        environ["PYTHONPATH"] = str(site)
    environ.update(env)
    return subprocess.run([NALIGN, *args], capture_output=True, text=True, env=environ, timeout=120)


def rule_names(result: subprocess.CompletedProcess) -> dict[str, str]:
    assert result.returncode == 0, result.stderr
    return {row["name"]: row["plugin"] for row in json.loads(result.stdout)}


def test_installed_example_plugin_adds_its_rule_and_primitive(plugin_site):
    result = nalign("list", "rules", "--json", site=plugin_site, NALIGN_BLOCK_PLUGINS="broken")
    rules = rule_names(result)
    assert {name: rules[name] for name in ("sign_symmetry", "usf", "brsf", "frsf", "dfa")} == {
        "sign_symmetry": "sign_symmetry",
        "usf": "sign_symmetry",
        "brsf": "sign_symmetry",
        "frsf": "sign_symmetry",
        "dfa": "direct_feedback",
    }
    assert rules["kp"] == "neural_alignment.plugins.rules"
    primitives = rule_names(nalign("list", "primitives", "--json", site=plugin_site, NALIGN_BLOCK_PLUGINS="broken"))
    assert primitives["sign"] == "sign_symmetry"


def test_plugins_command_names_the_distribution_and_version(plugin_site):
    result = nalign("plugins", "--json", site=plugin_site, NALIGN_BLOCK_PLUGINS="broken")
    assert result.returncode == 0, result.stderr
    plugins = {p["name"]: p for p in json.loads(result.stdout)}
    sign, direct = plugins["sign_symmetry"], plugins["direct_feedback"]
    assert (sign["distribution"], sign["version"]) == ("neural-alignment-sign-symmetry", "0.2.0")
    assert sign["registered"] == {"primitives": ["sign"], "rules": ["sign_symmetry", "usf", "brsf", "frsf"]}
    assert (direct["distribution"], direct["version"]) == ("neural-alignment-direct-feedback", "0.1.0")
    assert direct["registered"] == {"rules": ["dfa"]}


def train_installed(rule: str, site: Path, run_dir: Path) -> tuple[dict, dict]:
    """Train digits-mlp 5 steps with an installed plugin's rule through `nalign run`; (summary, model state)."""
    result = nalign(
        "run",
        "digits-mlp",
        f"rule.name={rule}",
        "train.steps=5",
        "--out",
        str(run_dir),
        site=site,
        NALIGN_BLOCK_PLUGINS="broken",
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["status"], summary["rule"], summary["steps"]) == ("finished", rule, 5)
    return summary, torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"]


def test_installed_usf_trains_by_name(plugin_site, tmp_path):
    """B follows sign(W) (weight angle far below feedback alignment's ~90 degrees), every entry of a
    layer's B at one magnitude. brsf and frsf: the plugin's own tests."""
    summary, state = train_installed("usf", plugin_site, tmp_path / "run")
    assert summary["mean_weight_angle"] < 60
    for key in [k for k in state if k.endswith("backward_weight")]:
        magnitudes = state[key].abs()
        torch.testing.assert_close(magnitudes, magnitudes.mean().expand_as(magnitudes))


def test_installed_dfa_trains_by_name_and_checkpoints_its_feedback(plugin_site, tmp_path):
    _summary, state = train_installed("dfa", plugin_site, tmp_path / "run")
    layers = {k.rpartition(".")[0] for k in state if k.endswith(".weight")}
    assert {k.rpartition(".")[0] for k in state if k.endswith(".direct_feedback_seed")} == layers


def test_broken_plugin_is_reported_and_the_others_still_load(plugin_site):
    result = nalign("list", "rules", "--json", site=plugin_site)
    assert "sign_symmetry" in rule_names(result)
    warning = [line for line in result.stderr.splitlines() if "broken" in line]
    assert warning == [
        "nalign: warning: plugin 'broken' (nalign-broken-plugin) failed: "
        "ImportError: No module named 'a_dependency_that_is_not_installed'"
    ]


def test_blocking_a_plugin_by_name(plugin_site):
    result = nalign("list", "rules", "--json", site=plugin_site, NALIGN_BLOCK_PLUGINS="broken,sign_symmetry")
    assert "sign_symmetry" not in rule_names(result)
    assert result.stderr == ""


def test_autoload_off_skips_entry_points_but_keeps_builtins(plugin_site):
    result = nalign("list", "rules", "--json", site=plugin_site, NALIGN_DISABLE_PLUGIN_AUTOLOAD="1")
    rules = rule_names(result)
    assert "sign_symmetry" not in rules and {"bp", "fa", "kp"} <= set(rules)
    assert result.stderr == ""


def test_duplicate_rule_name_from_an_installed_plugin_names_both_plugins(clashing_site):
    result = nalign("list", "rules", site=clashing_site)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "nalign: error: rules name 'kp' is registered by both plugin "
        "'neural_alignment.plugins.rules' and plugin 'clashing'"
    )


def test_list_rules_json_is_valid_and_in_natural_order():
    rows = json.loads(nalign("list", "rules", "--json").stdout)
    names = [row["name"] for row in rows]
    assert names == sorted(names) and {"bp", "fa", "wm", "ia", "sa", "aa", "kp"} <= set(names)
    assert all(row["description"] for row in rows)


def test_list_with_a_glob_pattern():
    rows = json.loads(nalign("list", "architectures", "resnet1*", "--json").stdout)
    assert [row["name"] for row in rows][:3] == ["resnet18", "resnet18_v2", "resnet101"]


def test_list_recipes_shows_the_recipes_in_registered_folders():
    rows = {row["name"]: row for row in json.loads(nalign("list", "recipes", "fmnist*", "--json").stdout)}
    assert set(rows) == {
        "fmnist-convnet",
        "fmnist-depth",
        "fmnist-depth-converged",
        "fmnist-mlp",
        "fmnist-noisy-updates",
        "fmnist-noisy-updates-converged",
        "fmnist-vit",
        "fmnist-vit-converged",
    }
    assert rows["fmnist-convnet"]["plugin"] == "neural_alignment.plugins.recipes"
    assert rows["fmnist-convnet"]["description"].startswith("The main job")


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ("list", "nosuchkind"),
            "nalign: error: unknown kind 'nosuchkind'. Valid kinds: ops, primitives, rules, "
            "architectures, datasets, backends, loggers, recipes",
        ),
        (("nosuchcommand",), "nalign: error: argument COMMAND: invalid choice: 'nosuchcommand'"),
    ],
)
def test_user_mistakes_exit_2_with_one_line(args, message):
    result = nalign(*args)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith(message)
    assert "Traceback" not in result.stderr


def test_version():
    result = nalign("--version")
    assert result.returncode == 0 and result.stdout.startswith("nalign ")


@pytest.fixture(scope="module")
def misspelt_site(tmp_path_factory) -> Path:
    return pip_install_to(
        tmp_path_factory.mktemp("misspelt"),
        ROOT / "tests" / "plugins" / "misspelt-plugin",
        ROOT / "tests" / "plugins" / "broken-plugin",
    )


def test_a_rule_weighing_an_unknown_primitive_is_caught_when_the_registry_is_built(misspelt_site):
    result = nalign("list", "rules", "--json", site=misspelt_site, NALIGN_BLOCK_PLUGINS="broken")
    rules = rule_names(result)
    assert "good_rule" in rules and "typo_rule" not in rules  # the rest of the plugin still loads
    warnings = {line for line in result.stderr.splitlines() if "typo_rule" in line}
    assert warnings == {
        "nalign: warning: plugin 'misspelt' (nalign-misspelt-plugin) failed: rule 'typo_rule' weighs unknown "
        "primitive 'decy'. Did you mean 'decay'? Known primitives: amp, angle, decay, good_primitive, null, self, "
        "sparse; the rule is left out"
    }


def test_a_primitive_with_misspelt_needs_or_another_name_is_left_out_with_a_warning(misspelt_site):
    result = nalign("list", "primitives", "--json", site=misspelt_site, NALIGN_BLOCK_PLUGINS="broken")
    primitives = rule_names(result)
    assert "good_primitive" in primitives and not {"typo_needs", "wrong_name"} & set(primitives)
    assert "primitive 'typo_needs' needs unknown category 'weigths'. Did you mean 'weights'?" in result.stderr
    assert "primitive registered as 'wrong_name' has Primitive.name 'good_primitive'" in result.stderr


def test_plugins_json_lists_failures_with_their_error(misspelt_site):
    result = nalign("plugins", "--json", site=misspelt_site)
    assert result.returncode == 0, result.stderr
    info = {p["name"]: p for p in json.loads(result.stdout)}
    assert info["broken"]["error"] == "ImportError: No module named 'a_dependency_that_is_not_installed'"
    assert info["broken"]["distribution"] == "nalign-broken-plugin" and info["broken"]["registered"] == {}
    assert "typo_rule" in info["misspelt"]["error"] and info["misspelt"]["registered"]["rules"] == ["good_rule"]
    assert info["neural_alignment.plugins.rules"]["error"] is None


def test_a_failing_plugin_warns_once_from_python(misspelt_site):
    environ = {k: v for k, v in os.environ.items() if not k.startswith("NALIGN_")}
    environ.update(PYTHONPATH=str(misspelt_site), NALIGN_BLOCK_PLUGINS="misspelt")
    code = (
        "from neural_alignment.registry import get_registry\n"
        "get_registry(); get_registry()\n"
        "from neural_alignment.api import get_rule\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environ, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if "PluginWarning" in line]
    assert len(lines) == 1 and "plugin 'broken' (nalign-broken-plugin) failed: ImportError" in lines[0]


@pytest.fixture(scope="module")
def faulty_site(tmp_path_factory) -> Path:
    """A plugin that prints while it is imported and whose rule raises in training's second step."""
    return pip_install_to(tmp_path_factory.mktemp("faulty"), ROOT / "tests" / "plugins" / "faulty-plugin")


@pytest.mark.parametrize("args", [("list", "rules", "--json"), ("plugins", "--json")])
def test_a_plugin_that_prints_while_loading_leaves_json_output_clean(faulty_site, args):
    result = nalign(*args, site=faulty_site)
    assert result.returncode == 0, result.stderr
    names = [row["name"] for row in json.loads(result.stdout)]  # the whole of stdout is the JSON
    assert "faulty" in names
    assert result.stderr.splitlines() == ["faulty plugin: loading", "faulty plugin: registering"]


def test_a_plugins_error_in_training_is_one_line_naming_the_plugin_and_rule(faulty_site, tmp_path):
    run_dir = tmp_path / "run"
    result = nalign(
        "run",
        "digits-mlp",
        "rule.name=faulty",
        "train.steps=5",
        "log.loggers=[jsonl]",
        "optim.task.schedule=null",  # digits-mlp's 20-epoch schedules would be warned about in 5 steps
        "optim.alignment.schedule=null",
        "--out",
        str(run_dir),
        site=faulty_site,
    )
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("nalign")]
    assert "Traceback" not in result.stderr and len(lines) == 1
    assert lines[0].startswith(
        "nalign: error: plugin 'faulty' (distribution nalign-faulty-plugin 0.0.2, module nalign_faulty, __init__.py:"
    )
    assert "raised ValueError: explode: the plugin's own bug at step " in lines[0]
    assert lines[0].endswith(
        f"training rule 'faulty'; the full traceback is in {run_dir / 'error.log'}; it has no checkpoint yet: "
        f"start it again with --out {run_dir} --overwrite"
    )
    log = (run_dir / "error.log").read_text()
    assert log.startswith("Traceback") and 'raise ValueError("explode: the plugin\'s own bug")' in log
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "stopped" and summary["error"] == lines[0].removeprefix("nalign: error: ")
