"""Plugin registry: hookspecs, the plugin manager, and one typed catalog per kind."""

from neural_alignment.registry.catalog import (
    Catalog,
    DuplicateNameError,
    Entry,
    RegistryError,
    UnknownNameError,
)
from neural_alignment.registry.hookspecs import PROJECT_NAME
from neural_alignment.registry.manager import (
    KINDS,
    PluginFailure,
    PluginWarning,
    Registry,
    build_plugin_manager,
    get_registry,
    reset_registry,
)
from neural_alignment.registry.markers import hookimpl

__all__ = [
    "KINDS",
    "PROJECT_NAME",
    "Catalog",
    "DuplicateNameError",
    "Entry",
    "PluginFailure",
    "PluginWarning",
    "Registry",
    "RegistryError",
    "UnknownNameError",
    "build_plugin_manager",
    "get_registry",
    "hookimpl",
    "reset_registry",
]
