"""Built-in ``nalign`` subcommands ``search`` and ``search-report``."""

from neural_alignment.recipes import search_commands
from neural_alignment.registry.markers import hookimpl


@hookimpl
def register_commands(cli):
    search_commands.register(cli)
