"""Built-in ``nalign`` subcommands: ``run``, ``show`` and ``compare``."""

from neural_alignment.recipes import commands
from neural_alignment.registry.markers import hookimpl


@hookimpl
def register_commands(cli):
    commands.register(cli)
