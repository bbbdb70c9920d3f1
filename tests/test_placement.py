"""grids.placement without a cluster: the trial resources a recipe or a flag may name, the Ray
keywords they become, and the backend a trial picks from what Ray assigned it."""

import pytest

from neural_alignment.cli import main
from neural_alignment.core.errors import UserError
from neural_alignment.grids.placement import chosen_backend, local_cpus, remote_options, trial_resources
from neural_alignment.recipes.loader import load_recipe


def test_resources_merge_onto_one_cpu_and_become_ray_keywords():
    assert load_recipe("digits-mlp").search.trial_resources == {"cpu": 1}
    assert load_recipe("digits-mlp", ["search.trial_resources={gpu: 1}"]).search.trial_resources == {"cpu": 1, "gpu": 1}
    assert trial_resources({"TPU": 4}) == {"cpu": 1.0, "TPU": 4.0}
    options = remote_options(trial_resources({"cpu": 0, "gpu": 0.5, "accel": 1, "memory": 2**30}))
    assert options == {"num_cpus": 0.0, "num_gpus": 0.5, "resources": {"accel": 1.0}, "memory": 2.0**30}
    assert local_cpus(4, {"cpu": 2.0}) == 8 and local_cpus(4, {"cpu": 0.0}) == 4


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("{GPU: 1}", "write 'gpu', not 'GPU'"),
        ("{gpu: 1.5}", "above 1 a whole number"),
        ("{gpu: -1}", ">= 0"),
        ("{cpu: 0}", "asks for nothing"),
        ("{accel: many}", "not an amount"),
    ],
)
def test_a_bad_recipe_key_is_a_one_line_error_naming_it(value, says):
    with pytest.raises(UserError) as info:
        load_recipe("digits-mlp", [f"search.trial_resources={value}"])
    message = str(info.value)
    assert "search.trial_resources" in message and says in message and "\n" not in message


def test_a_bad_compare_flag_is_a_one_line_error_naming_it(capsys):
    assert main(["compare", "digits-mlp", "--rules", "bp", "--backend", "ray", "--trial-resources", "[1]"]) == 2
    assert "--trial-resources must be a mapping" in capsys.readouterr().err
    assert main(["compare", "digits-mlp", "--rules", "bp", "--backend", "ray", "--trial-resources", "{GPU: 1}"]) == 2
    assert "bad value for --trial-resources: write 'gpu'" in capsys.readouterr().err


def test_the_backend_follows_the_assigned_accelerator_when_the_recipe_says_cpu():
    assert chosen_backend("cpu", {"GPU": ["3"]}) == "cuda"
    assert chosen_backend("cpu", {"TPU": ["0", "1", "2", "3"]}) == "xla"
    assert chosen_backend("cpu", {"GPU": []}) == "cpu"
    assert chosen_backend("cpu", {}) == "cpu"
    assert chosen_backend("ddp", {"GPU": ["0"]}) == "ddp"  # a recipe that names its backend keeps it
