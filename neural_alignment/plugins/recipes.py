"""Built-in recipes: the folder of YAML files shipped in ``neural_alignment/recipes/builtin``."""

from pathlib import Path

from neural_alignment.registry.markers import hookimpl

BUILTIN_RECIPES = Path(__file__).resolve().parent.parent / "recipes" / "builtin"


@hookimpl
def register_recipes(register):
    register("builtin", BUILTIN_RECIPES, "the recipes shipped with neural-alignment")
