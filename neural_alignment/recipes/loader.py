"""Find recipes by name, resolve ``base:`` inheritance and ``key=value`` overrides, validate.

A recipe NAME is looked up as ``NAME.yaml`` in every folder a plugin registered through
``register_recipes`` (first folder wins, in registration order); a path to a YAML file
also works. Merge order, lowest first: the ``base`` chain (recursively), the recipe file,
the rule's own recommended settings (``RuleSpec.recipe``: how a plugin rule ships what built-in
rules get from the built-in recipes' ``by_rule``), ``by_rule[<rule.name>]``, the command-line
overrides (mappings merge key by key, except that a schedule of another ``kind`` replaces the
one below it). Every step is validated against
``recipes.schema.Recipe``: an unknown key or a wrong type is a ``RecipeError`` naming the
full key path and the valid keys or the expected type. Then every value is checked
(:func:`check_values`): each schema field's declared range or names, the settings that go
together, and schedules (``optim.*.schedule``, ``rule.schedules.*``), built once to check their
kinds and keys. A ``base:`` given as a path is read relative to the folder of the file naming it.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
from collections.abc import Iterable
from pathlib import Path
from typing import Any, cast

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from neural_alignment.core.errors import UserError, did_you_mean
from neural_alignment.core.schedules import ScheduleConfig, make_schedule
from neural_alignment.recipes.schema import Recipe
from neural_alignment.registry import get_registry
from neural_alignment.registry.catalog import Entry, natural_key

SUFFIXES = (".yaml", ".yml")


class RecipeError(UserError):
    """A recipe that cannot be found, parsed or validated."""


def to_dict(cfg: DictConfig, resolve: bool = False) -> dict[str, Any]:
    """A mapping node of a recipe as plain dicts and lists: ``OmegaConf.to_container``, typed."""
    return cast(dict[str, Any], OmegaConf.to_container(cfg, resolve=resolve))


def _recipe_paths() -> dict[str, tuple[Path, str]]:
    """Every registered recipe: name -> (YAML file, plugin of its folder), natural order; first folder wins."""
    found: dict[str, tuple[Path, str]] = {}
    for folder_entry in get_registry().catalog("recipes").entries():
        folder = Path(folder_entry.obj)
        for path in sorted(folder.iterdir()) if folder.is_dir() else ():
            if path.suffix in SUFFIXES and path.stem not in found:
                found[path.stem] = (path, folder_entry.plugin)
    return {name: found[name] for name in sorted(found, key=natural_key)}


def recipe_entries(pattern: str | None = None) -> list[Entry]:
    """Every registered recipe as a catalog entry (name, YAML file, plugin of its folder, its
    ``description``), natural order, optionally filtered by a glob; first registered folder wins."""
    return [
        Entry(name, path, plugin, _description(path))
        for name, (path, plugin) in _recipe_paths().items()
        if pattern is None or fnmatch.fnmatchcase(name, pattern)
    ]


def _description(path: Path) -> str:
    """The first line of a recipe file's ``description`` ('' when it has none or does not parse)."""
    try:
        text = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return ""
    description = str(text.get("description") or "") if isinstance(text, dict) else ""
    return description.strip().splitlines()[0] if description.strip() else ""


def recipe_files() -> dict[str, Path]:
    """Every registered recipe: name -> YAML file (first registered folder wins; no file is parsed)."""
    return {name: path for name, (path, _) in _recipe_paths().items()}


def find_recipe(name: str) -> Path:
    """The YAML file of recipe ``name`` (a registered name or a path to a YAML file)."""
    path = Path(name)
    if path.suffix in SUFFIXES:
        if path.is_file():
            return path
        raise RecipeError(f"recipe file {name!r} does not exist")
    known = recipe_files()
    if name in known:
        return known[name]
    hint = did_you_mean(name, known, cutoff=0.5)
    raise RecipeError(f"unknown recipe {name!r}.{hint} Known: {', '.join(known) or '(none)'}")


def _read(path: Path) -> DictConfig:
    """The mapping a recipe file holds; an empty file, a scalar or a list is a ``RecipeError``."""
    try:
        # the top level's kind first: OmegaConf reads '' as {} and 'x' as {x: null}
        top = yaml.load(path.read_text(encoding="utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        cfg = OmegaConf.load(path)  # its YAML reads 1e-3 as a number
    except Exception as exc:  # YAML syntax errors come in many types
        raise RecipeError(f"cannot parse recipe file {path}: {str(exc).splitlines()[0]}") from None
    if top is None:
        raise RecipeError(f"recipe file {path} is empty; it must hold a mapping of sections (train:, data:, ...)")
    if not isinstance(top, dict) or not isinstance(cfg, DictConfig):
        raise RecipeError(
            f"recipe file {path} must hold a mapping of sections (train:, data:, ...), not a {type(top).__name__}"
        )
    return cfg


def _error(exc: OmegaConfBaseException, where: str) -> RecipeError:
    """Turn an OmegaConf validation error into a one-line message naming the key path."""
    key = exc.full_key or exc.key
    if isinstance(exc, ConfigKeyError):
        owner = exc.object_type
        valid = [f.name for f in dataclasses.fields(owner)] if dataclasses.is_dataclass(owner) else []
        parent = str(key).rpartition(".")[0]
        listed = f"; valid keys under {parent or 'the top level'!r}: {', '.join(valid)}" if valid else ""
        return RecipeError(f"unknown recipe key {key!r} in {where}{listed}")
    reason = str(exc.msg).splitlines()[0] if exc.msg else type(exc).__name__
    return RecipeError(f"bad value for recipe key {key!r} in {where}: {reason}")


@functools.lru_cache(maxsize=1)
def _schema() -> DictConfig:
    """The schema's defaults as a config, built once (``OmegaConf.merge`` copies it, never changes it)."""
    return OmegaConf.structured(Recipe)


def validate(cfg, where: str) -> DictConfig:
    """``cfg`` merged onto the schema's defaults; raises ``RecipeError`` naming a bad key."""
    schema = _schema()
    try:
        merged = OmegaConf.merge(schema, cfg)
        assert isinstance(merged, DictConfig)  # merged onto a mapping
        return merged
    except OmegaConfBaseException as exc:
        raise _error(exc, where) from None
    except TypeError:  # OmegaConf merges a list into a mapping (or back) with a bare TypeError
        key = _shape_mismatch(schema, cfg)
        raise RecipeError(
            f"bad value for recipe key {key!r} in {where}: a list where a mapping belongs, "
            "or a mapping where a list belongs"
        ) from None


def _shape_mismatch(schema: DictConfig, cfg, prefix: str = "") -> str:
    """The first key where ``cfg`` holds a list and ``schema`` a mapping, or the other way round."""
    for key, value in cfg.items_ex(resolve=False) if isinstance(cfg, DictConfig) else ():
        below = schema._get_node(key) if key in schema else None
        if (isinstance(value, ListConfig) and isinstance(below, DictConfig)) or (
            isinstance(value, DictConfig) and isinstance(below, ListConfig)
        ):
            return f"{prefix}{key!s}"
        if isinstance(value, DictConfig) and isinstance(below, DictConfig):
            found = _shape_mismatch(below, value, f"{prefix}{key!s}.")
            if found:
                return found
    return prefix.rstrip(".")


def _clear_replaced(base: DictConfig, other: DictConfig) -> None:
    """Set to null each node of ``base`` that ``other`` replaces rather than merges into (in place).

    A mapping merges key by key into a mapping below it, except a mapping with a ``kind``
    (a schedule) over one of another kind, a mapping over a list or a list over a mapping:
    those replace it, so
    ``optim.task.schedule={kind: linear, ...}`` never mixes its keys with a ``step`` schedule's.
    """
    for key, value in other.items_ex(resolve=False):
        if key not in base:
            continue
        below = base._get_node(key)
        mixed = (isinstance(value, ListConfig) and isinstance(below, DictConfig)) or (
            isinstance(value, DictConfig) and isinstance(below, ListConfig)
        )
        if mixed or (
            isinstance(value, DictConfig)
            and isinstance(below, DictConfig)
            and "kind" in value
            and below.get("kind") != value.get("kind")
        ):
            base[key] = None
        elif isinstance(value, DictConfig) and isinstance(below, DictConfig):
            _clear_replaced(below, value)


def merge(*configs) -> DictConfig:
    """``OmegaConf.merge`` of raw (unvalidated) configs, with the replacement rule of ``_clear_replaced``."""
    result = OmegaConf.create(to_dict(configs[0]))
    for other in configs[1:]:
        other = OmegaConf.create(to_dict(other)) if not isinstance(other, DictConfig) else other
        _clear_replaced(result, other)
        merged = OmegaConf.merge(result, other)
        assert isinstance(merged, DictConfig)  # merged onto a mapping
        result = merged
    return result


def _chain(name: str, seen: tuple[str, ...]) -> DictConfig:
    """The raw merge of recipe ``name`` over its base chain, each file validated alone."""
    if name in seen:
        raise RecipeError(f"recipe base cycle: {' -> '.join((*seen, name))}")
    path = find_recipe(name)
    raw = _read(path)
    validate(raw, f"recipe file {path}")
    own_name = raw.get("name") or path.stem
    base = raw.get("base")
    if base:
        if not isinstance(base, str):
            raise RecipeError(f"'base' in recipe file {path} must be a recipe name, not {base!r}")
        if Path(base).suffix in SUFFIXES:  # a path: from the folder of the file that names it
            base = str(path.parent / base)
        try:
            raw = merge(_chain(base, (*seen, name)), raw)
        except RecipeError as exc:
            raise RecipeError(f"{exc} (base of recipe {name!r})") from None
    raw.name = own_name
    return raw


def _dotlist(overrides: Iterable[str]) -> DictConfig:
    items = list(overrides)
    for item in items:
        if "=" not in item or item.startswith("="):
            raise RecipeError(f"override {item!r} must look like key=value, e.g. train.steps=100")
    try:
        return OmegaConf.from_dotlist(items)
    except (OmegaConfBaseException, yaml.YAMLError) as exc:
        raise RecipeError(f"cannot parse overrides {items}: {str(exc).splitlines()[0]}") from None


def load_recipe(name: str, overrides: Iterable[str] = ()) -> DictConfig:
    """The resolved, validated recipe ``name`` with ``key=value`` overrides applied."""
    overrides = list(overrides)  # read more than once: a generator would be empty in the messages
    raw = _chain(name, ())
    cli = _dotlist(overrides)
    where = f"recipe {name!r} with overrides {overrides}"
    first = validate(merge(raw, cli), where)
    rule = first.rule.name
    rules = get_registry().catalog("rules")
    shipped = rules.get(rule).recipe if rule in rules.names() else {}
    by_rule = first.by_rule.get(rule)
    if by_rule is None and not shipped:
        return check_values(first, where)
    layers = [raw]
    if shipped:
        layers.append(validate_fragment(OmegaConf.create(dict(shipped)), f"rule {rule!r}'s recommended settings"))
    if by_rule is not None:
        layers.append(validate_fragment(by_rule, f"by_rule.{rule} of recipe {name!r}"))
    return check_values(validate(merge(*layers, cli), where), where)


def load_resolved_recipe(path: str | Path, overrides: Iterable[str] = ()) -> DictConfig:
    """A recipe that was resolved already (a run folder's ``recipe.yaml``) with ``key=value`` overrides.

    Its ``base`` chain and ``by_rule`` entry were applied when it was written; they are not applied again.
    """
    path, overrides = Path(path), list(overrides)
    if not path.is_file():
        raise RecipeError(f"recipe file {path} does not exist")
    where = f"recipe file {path}" + (f" with overrides {overrides}" if overrides else "")
    return check_values(validate(merge(_read(path), _dotlist(overrides)), where), where)


def _checked_fields(schema: Any, cfg: DictConfig, prefix: str = ""):
    """(key path, value, check) of every field of the ``schema`` dataclass instance that declares one."""
    for schema_field in dataclasses.fields(schema):
        default = getattr(schema, schema_field.name)
        key = f"{prefix}{schema_field.name}"
        if dataclasses.is_dataclass(default):
            yield from _checked_fields(default, cfg[schema_field.name], f"{key}.")
        elif "valid" in schema_field.metadata:
            yield key, cfg[schema_field.name], schema_field.metadata["valid"]


def check_values(recipe: DictConfig, where: str) -> DictConfig:
    """``recipe`` once every value is valid; else a ``RecipeError`` naming the key, the value and what is valid.

    Checks each schema field's declared :class:`~neural_alignment.recipes.schema.Check` (a list:
    each item; null where the schema allows it), the length (``train.steps`` or ``train.epochs``),
    that ``train.accumulate`` divides ``data.batch_size``, and every schedule.
    """
    for key, value, check in _checked_fields(Recipe(), recipe):
        for item in value if isinstance(value, ListConfig) else [value]:
            problem = None if item is None else check.problem(item)
            if problem:
                raise RecipeError(f"bad value for recipe key {key!r} in {where}: {problem}")
    t = recipe.train
    if t.steps is None and t.epochs is None:
        raise RecipeError(f"set train.steps or train.epochs in {where} (both are null)")
    if recipe.data.batch_size % t.accumulate:
        raise RecipeError(
            f"bad value for recipe key 'train.accumulate' in {where}: {t.accumulate} does not divide "
            f"data.batch_size={recipe.data.batch_size}"
        )
    return _check_schedules(recipe, where)


def recipe_schedules(recipe: DictConfig) -> dict[str, Any]:
    """Every schedule config of ``recipe`` (plain containers) by key: the two optimizers' and the rule coefficients'."""
    schedules = {f"optim.{part}.schedule": recipe.optim[part].schedule for part in ("task", "alignment")}
    schedules.update({f"rule.schedules.{key}": value for key, value in recipe.rule.schedules.items()})
    return {
        k: OmegaConf.to_container(v) if isinstance(v, (DictConfig, ListConfig)) else v for k, v in schedules.items()
    }


def _check_schedules(recipe: DictConfig, where: str) -> DictConfig:
    """``recipe`` once every schedule in it builds; else a ``RecipeError`` naming the key."""
    for key, cfg in recipe_schedules(recipe).items():
        try:
            plain = OmegaConf.to_container(cfg) if isinstance(cfg, (DictConfig, ListConfig)) else cfg
            make_schedule(cast(ScheduleConfig, plain))
        except (UserError, TypeError, ValueError) as exc:
            raise RecipeError(f"bad value for recipe key {key!r} in {where}: {exc}") from None
    return recipe


def validate_fragment(fragment, where: str) -> DictConfig:
    """A partial recipe (e.g. a ``by_rule`` entry), checked key by key but not filled with defaults."""
    fragment = OmegaConf.create(OmegaConf.to_container(fragment)) if fragment is not None else OmegaConf.create({})
    validate(fragment, where)
    return fragment


def to_yaml(recipe: DictConfig) -> str:
    """The resolved recipe as YAML text (what ``nalign show`` prints and run folders keep)."""
    return OmegaConf.to_yaml(recipe, resolve=True)
