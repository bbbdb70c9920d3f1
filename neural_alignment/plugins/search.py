"""Built-in ``nalign`` subcommands ``search`` and ``search-report``."""

from neural_alignment.registry.markers import hookimpl
from neural_alignment.search import commands as search_commands


@hookimpl
def register_commands(cli):
    search_commands.register(cli)
