"""Built-in ``nalign`` subcommands: ``show`` (a recipe), ``run`` (one run) and ``compare`` (a grid of runs)."""

from neural_alignment.grids import commands as grid_commands
from neural_alignment.recipes import commands as recipe_commands
from neural_alignment.registry.markers import hookimpl
from neural_alignment.training import commands as training_commands


@hookimpl
def register_commands(cli):
    recipe_commands.register(cli)
    training_commands.register(cli)
    grid_commands.register(cli)
