"""The built-in plugins. Each module registers through the public hooks, like any third party.

``BUILTIN_PLUGINS`` lists them by module name; the plugin manager registers them in this
order before it loads entry points.
"""

BUILTIN_PLUGINS: tuple[str, ...] = (
    "neural_alignment.plugins.ops",
    "neural_alignment.plugins.primitives",
    "neural_alignment.plugins.rules",
    "neural_alignment.plugins.architectures",
    "neural_alignment.plugins.datasets",
    "neural_alignment.plugins.backends",
    "neural_alignment.plugins.loggers",
    "neural_alignment.plugins.recipes",
    "neural_alignment.plugins.commands",
    "neural_alignment.plugins.analysis_commands",
    "neural_alignment.plugins.search",
)
