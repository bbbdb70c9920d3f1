"""Built-in ``nalign`` subcommands of the analyses: ``report``, ``analyze d1|d2``, ``neural-fit``."""

from neural_alignment.analysis import commands
from neural_alignment.registry.markers import hookimpl


@hookimpl
def register_commands(cli):
    commands.register(cli)
