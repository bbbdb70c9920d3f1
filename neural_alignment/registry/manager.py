"""The plugin manager and the catalogs it fills.

Order of loading: the built-in plugins (``neural_alignment.plugins.BUILTIN_PLUGINS``), the
in-process ``extra_plugins``, then every entry point of the ``neural_alignment`` group, then a
check for misspelt hook names. A plugin that fails (on import, on registration with a hook
argument its spec lacks, in a hook, or with a misspelt hook) is recorded in
``Registry.failures`` and the others still load. Each entry is checked as it is registered and
each rule's primitives once all are in (``registry.checks``): a built-in plugin's mistake is a
``RegistryError``, a third-party plugin's a failure naming it, with that entry left out.
Building a registry warns once per failure (:class:`PluginWarning`, so Python users see them);
``nalign`` prints them as one-line warnings instead and lists them in ``nalign plugins --json``.

Environment:
  NALIGN_DISABLE_PLUGIN_AUTOLOAD=1   skip entry points (built-ins still load)
  NALIGN_BLOCK_PLUGINS=a,b           block plugins by name (entry-point or built-in name)
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import os
import sys
import traceback
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from neural_alignment.core.errors import did_you_mean
from neural_alignment.registry import hookspecs
from neural_alignment.registry.catalog import Catalog, Entry, RegistryError
from neural_alignment.registry.checks import entry_problem, rule_problems

KINDS = ("ops", "primitives", "rules", "architectures", "datasets", "backends", "loggers", "recipes")
ENTRY_POINT_GROUP = hookspecs.PROJECT_NAME
BUILTIN_DISTRIBUTION = "neural-alignment"


class PluginWarning(UserWarning):
    """A plugin that failed to load or registered something invalid (the other plugins still load)."""


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that could not be loaded or whose hook raised."""

    name: str
    distribution: str
    error: str

    def __str__(self) -> str:
        return f"plugin {self.name!r} ({self.distribution}) failed: {self.error}"


@dataclass
class PluginInfo:
    """A plugin, what it registered and, when it failed (in part), the error."""

    name: str
    distribution: str
    version: str
    registered: dict[str, list[str]] = field(default_factory=dict)
    error: str | None = None


@dataclass(frozen=True)
class PluginFrame:
    """A plugin's code in a traceback: the plugin, its module, file, line and function."""

    plugin: PluginInfo
    module: str
    filename: str
    line: int
    function: str

    def __str__(self) -> str:
        p = self.plugin
        return (
            f"plugin {p.name!r} (distribution {p.distribution} {p.version}, module {self.module}, "
            f"{os.path.basename(self.filename)}:{self.line} in {self.function})"
        )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _env_list(name: str) -> list[str]:
    return [part.strip() for part in os.environ.get(name, "").split(",") if part.strip()]


def _version_of(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "unknown"


def build_plugin_manager(
    autoload: bool | None = None, blocked: Iterable[str] | None = None, extra_plugins: Iterable[Any] = ()
) -> tuple[pluggy.PluginManager, list[PluginFailure], dict[str, str]]:
    """Build a fresh plugin manager.

    Returns the manager, the failures met while loading, and a map plugin name ->
    distribution name. ``autoload``/``blocked`` default to the environment variables.
    ``extra_plugins`` (objects or modules) are registered after the built-ins; tests use it.
    """
    from neural_alignment.plugins import BUILTIN_PLUGINS

    if autoload is None:
        autoload = not _env_flag("NALIGN_DISABLE_PLUGIN_AUTOLOAD")
    blocked = list(_env_list("NALIGN_BLOCK_PLUGINS") if blocked is None else blocked)

    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    for name in blocked:
        pm.set_blocked(name)
    failures: list[PluginFailure] = []
    distributions: dict[str, str] = {}

    for module_name in BUILTIN_PLUGINS:
        if pm.is_blocked(module_name):
            continue
        pm.register(importlib.import_module(module_name), name=module_name)
        distributions[module_name] = BUILTIN_DISTRIBUTION

    def register(load, name: str, distribution: str) -> None:
        try:
            # pluggy checks each hook's arguments here (a hookimpl argument the spec lacks)
            registered = pm.register(load(), name=name)
        except Exception as exc:  # a broken plugin must not stop the others
            failures.append(PluginFailure(name, distribution, _first_line(exc)))
            return
        if registered:
            distributions[name] = distribution

    for plugin in extra_plugins:
        register(
            lambda plugin=plugin: plugin,
            getattr(plugin, "__name__", None) or type(plugin).__name__,
            "(registered in process)",
        )

    if autoload:
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            if pm.is_blocked(ep.name) or pm.has_plugin(ep.name):
                continue
            register(ep.load, ep.name, ep.dist.name if ep.dist is not None else "unknown")

    while True:
        try:
            pm.check_pending()
            break
        except pluggy.PluginValidationError as exc:
            name = pm.get_name(exc.plugin) or repr(exc.plugin)
            failures.append(PluginFailure(name, distributions.get(name, "unknown"), _first_line(exc)))
            pm.unregister(exc.plugin)
    return pm, failures, distributions


class Registry:
    """Every catalog, filled by calling each plugin's hooks one plugin at a time."""

    def __init__(self, autoload: bool | None = None, blocked: Iterable[str] | None = None, extra_plugins=()):
        # what a plugin prints while it loads or registers goes to stderr: stdout carries results (--json)
        with contextlib.redirect_stdout(sys.stderr):
            self.pm, self.failures, self._distributions = build_plugin_manager(autoload, blocked, extra_plugins)
            self.catalogs: dict[str, Catalog] = {kind: Catalog(kind) for kind in KINDS}
            self._registered: dict[str, dict[str, list[str]]] = {}
            for kind in KINDS:
                self._collect(kind)
        for plugin, rule, problem in list(rule_problems(self.catalogs["rules"], self.catalogs["primitives"])):
            self._reject(plugin, f"{problem}; the rule is left out")
            self.catalogs["rules"].discard(rule)
            self._registered[plugin]["rules"].remove(rule)
        for failure in self.failures:
            warnings.warn(str(failure), PluginWarning, stacklevel=2)

    def _reject(self, plugin: str, problem: str) -> None:
        """A built-in plugin's invalid entry is an error; a third-party plugin's is recorded as its failure."""
        distribution = self._distributions.get(plugin, "unknown")
        if distribution == BUILTIN_DISTRIBUTION:
            raise RegistryError(f"built-in plugin {plugin!r}: {problem}")
        self.failures.append(PluginFailure(plugin, distribution, problem))

    def _collect(self, kind: str) -> None:
        hook = getattr(self.pm.hook, f"register_{kind}")
        catalog = self.catalogs[kind]
        for impl in hook.get_hookimpls():  # registration order
            plugin = impl.plugin_name

            def register(name: str, obj: Any, description: str | None = None, _plugin=plugin) -> None:
                problem = entry_problem(kind, name, obj)
                if problem:
                    self._reject(_plugin, f"{problem}; it is left out")
                    return
                catalog.add(name, obj, _plugin, description)
                self._registered.setdefault(_plugin, {}).setdefault(kind, []).append(name)

            try:
                impl.function(register=register)
            except RegistryError:
                raise
            except Exception as exc:
                self.failures.append(
                    PluginFailure(plugin, self._distributions.get(plugin, "unknown"), _first_line(exc))
                )

    def catalog(self, kind: str) -> Catalog:
        try:
            return self.catalogs[kind]
        except KeyError:
            hint = did_you_mean(kind, KINDS)
            raise RegistryError(f"unknown kind {kind!r}.{hint} Valid kinds: {', '.join(KINDS)}") from None

    def get(self, kind: str, name: str) -> Any:
        return self.catalog(kind).get(name)

    def entry(self, kind: str, name: str) -> Entry:
        return self.catalog(kind).entry(name)

    def plugins(self) -> list[PluginInfo]:
        """Every loaded plugin, then every plugin that failed to load; ``error`` joins a plugin's failures."""
        errors: dict[str, list[str]] = {}
        for failure in self.failures:
            errors.setdefault(failure.name, []).append(failure.error)
        infos = []
        for name, plugin in self.pm.list_name_plugin():
            if plugin is None:  # blocked
                continue
            dist = self._distributions.get(name, "unknown")
            error = "; ".join(errors.pop(name, [])) or None
            infos.append(PluginInfo(name, dist, _version_of(dist), self._registered.get(name, {}), error))
        for failure in self.failures:
            if failure.name in errors:  # never loaded
                infos.append(
                    PluginInfo(
                        failure.name,
                        failure.distribution,
                        _version_of(failure.distribution),
                        {},
                        "; ".join(errors.pop(failure.name)),
                    )
                )
        return infos

    def plugin_in_traceback(self, exc: BaseException) -> PluginFrame | None:
        """Where a third-party plugin's code raised ``exc``: the innermost frame of its traceback in
        that plugin's package; ``None`` when no plugin's code is in it."""
        roots = {}
        for name, plugin in self.pm.list_name_plugin():
            if plugin is None or self._distributions.get(name) == BUILTIN_DISTRIBUTION:
                continue
            module = plugin.__name__ if inspect.ismodule(plugin) else type(plugin).__module__
            roots[module.partition(".")[0]] = name
        for frame, line in reversed(list(traceback.walk_tb(exc.__traceback__))):
            module = str(frame.f_globals.get("__name__", ""))
            if module.partition(".")[0] in roots:
                info = next(info for info in self.plugins() if info.name == roots[module.partition(".")[0]])
                return PluginFrame(info, module, frame.f_code.co_filename, line, frame.f_code.co_name)
        return None

    def add_commands(self, subparsers) -> None:
        self.pm.hook.register_commands(cli=subparsers)


_default: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry, built on first use (not at import)."""
    global _default
    if _default is None:
        _default = Registry()
    return _default


def reset_registry() -> None:
    """Forget the process-wide registry so the next ``get_registry()`` rebuilds it."""
    global _default
    _default = None
