"""The catalogs and the plugin manager, with throwaway plugins registered in process."""

import re

import pytest

from neural_alignment import hookimpl
from neural_alignment.core.errors import UserError
from neural_alignment.registry import (
    KINDS,
    Catalog,
    DuplicateNameError,
    Registry,
    RegistryError,
    UnknownNameError,
)
from neural_alignment.registry.hookspecs import PROJECT_NAME


def test_catalog_orders_names_naturally_and_filters_by_glob():
    catalog = Catalog("architectures")
    for name in ["resnet101", "resnet18", "mlp", "resnet50", "resnet18_v2"]:
        catalog.add(name, object(), "p")
    assert catalog.names() == ["mlp", "resnet18", "resnet18_v2", "resnet50", "resnet101"]
    assert catalog.names("resnet1*") == ["resnet18", "resnet18_v2", "resnet101"]


def test_duplicate_name_error_names_both_plugins():
    catalog = Catalog("rules")
    catalog.add("kp", object(), "first_plugin")
    with pytest.raises(DuplicateNameError) as info:
        catalog.add("kp", object(), "second_plugin")
    message = str(info.value)
    assert "'kp'" in message and "first_plugin" in message and "second_plugin" in message


def test_unknown_name_lists_known_names_and_suggests_the_closest():
    catalog = Catalog("rules")
    for name in ["bp", "fa", "kp", "sa"]:
        catalog.add(name, object(), "builtin")
    with pytest.raises(UnknownNameError) as info:
        catalog.get("kpp")
    message = str(info.value)
    assert "Did you mean 'kp'?" in message
    assert "bp, fa, kp, sa" in message
    assert isinstance(info.value, UserError)


def test_description_defaults_to_first_docstring_line():
    def builder():
        """Build a thing.

        More text that is not the summary.
        """

    catalog = Catalog("architectures")
    catalog.add("thing", builder, "p")
    assert catalog.entry("thing").description == "Build a thing."


def test_description_of_a_rule_spec_is_its_doc():
    from neural_alignment.core.rules import RuleSpec

    catalog = Catalog("rules")
    catalog.add("mine", RuleSpec("mine", weights={"decay": 1.0}, doc="Mine: R = decay.\nDetails."), "p")
    assert catalog.entry("mine").description == "Mine: R = decay."


class _DatasetPlugin:
    """A throwaway plugin registering one dataset."""

    def __init__(self, name):
        self.dataset_name = name

    @hookimpl
    def register_datasets(self, register):
        register(self.dataset_name, lambda **kw: None, "throwaway data")


def test_every_kind_has_a_catalog_and_builtins_load_without_failures():
    registry = Registry(autoload=False)
    assert set(registry.catalogs) == set(KINDS)
    assert registry.failures == []


def test_in_process_plugin_is_registered_and_attributed():
    plugin = _DatasetPlugin("throwaway_data")
    registry = Registry(autoload=False, extra_plugins=[plugin])
    entry = registry.entry("datasets", "throwaway_data")
    assert entry.plugin == "_DatasetPlugin" and entry.description == "throwaway data"
    info = {p.name: p for p in registry.plugins()}["_DatasetPlugin"]
    assert info.registered == {"datasets": ["throwaway_data"]}


def test_two_plugins_with_one_name_is_an_error():
    class Other(_DatasetPlugin):
        pass

    with pytest.raises(DuplicateNameError, match=r"_DatasetPlugin.*Other"):
        Registry(autoload=False, extra_plugins=[_DatasetPlugin("same"), Other("same")])


def test_misspelt_hook_is_reported_and_the_rest_still_loads():
    class Misspelt:
        @hookimpl
        def register_rule(self, register):  # the hook is register_rules
            register("never", object())

    registry = Registry(autoload=False, extra_plugins=[Misspelt(), _DatasetPlugin("ok_data")])
    assert [f.name for f in registry.failures] == ["Misspelt"]
    assert "register_rule" in registry.failures[0].error
    assert "ok_data" in registry.catalog("datasets")


def test_hook_with_a_wrong_argument_name_is_reported_and_the_rest_still_loads():
    class WrongArgument:
        @hookimpl
        def register_rules(self, registr):  # the argument is register
            registr("never", object())

    registry = Registry(autoload=False, extra_plugins=[WrongArgument(), _DatasetPlugin("ok_data")])
    assert [f.name for f in registry.failures] == ["WrongArgument"]
    assert "register_rules" in registry.failures[0].error
    assert "ok_data" in registry.catalog("datasets") and "never" not in registry.catalog("rules")


def test_hook_that_raises_is_reported_and_the_rest_still_loads():
    class Raising:
        @hookimpl
        def register_datasets(self, register):
            raise RuntimeError("disk on fire\nsecond line")

    registry = Registry(autoload=False, extra_plugins=[Raising(), _DatasetPlugin("ok_data")])
    (failure,) = registry.failures
    assert failure.name == "Raising" and failure.error == "RuntimeError: disk on fire"
    assert "ok_data" in registry.catalog("datasets")


def test_blocked_builtin_plugin_registers_nothing():
    registry = Registry(autoload=False, blocked=["neural_alignment.plugins.rules"])
    assert len(registry.catalog("rules")) == 0
    assert "neural_alignment.plugins.rules" not in {p.name for p in registry.plugins()}


def test_unknown_kind_is_a_user_error_listing_kinds():
    registry = Registry(autoload=False)
    with pytest.raises(
        RegistryError, match=r"unknown kind 'rule'\. Did you mean 'rules'\? Valid kinds: ops, primitives"
    ):
        registry.catalog("rule")


def test_registries_are_independent():
    with_plugin = Registry(autoload=False, extra_plugins=[_DatasetPlugin("only_here")])
    without = Registry(autoload=False)
    assert "only_here" in with_plugin.catalog("datasets")
    assert "only_here" not in without.catalog("datasets")
    assert PROJECT_NAME == "neural_alignment"


class _PrimitivePlugin:
    """Registers ``obj`` as primitive ``name`` (whatever it is: the registry checks it)."""

    def __init__(self, name, obj):
        self.name, self.obj = name, obj

    @hookimpl
    def register_primitives(self, register):
        register(self.name, self.obj)


def _primitive(name, needs):
    from neural_alignment.core.primitives import Primitive

    return type("P", (Primitive,), {"name": name, "needs": needs, "__call__": lambda self, ctx: 0})()


@pytest.mark.parametrize(
    "name, obj, said",
    [
        ("a b", "weights", "'a b' is not a valid name: letters, digits, '_' and '-'"),
        ("kp,fa", "weights", "'kp,fa' is not a valid name"),
        ("mine", "other", "primitive registered as 'mine' has Primitive.name 'other'"),
        ("mine", "weights-as-text", "has needs='weights': it must be a set of"),
        ("mine", "misspelt", "needs unknown category 'projection'. Did you mean 'projections'?"),
    ],
)
def test_an_invalid_third_party_primitive_is_left_out_with_a_warning(name, obj, said):
    from neural_alignment.registry import PluginWarning

    primitive = {
        "weights": _primitive(name, frozenset({"weights"})),
        "other": _primitive("other", frozenset()),
        "weights-as-text": _primitive(name, "weights"),
        "misspelt": _primitive(name, {"projection"}),
    }[obj]
    with pytest.warns(PluginWarning) as caught:
        registry = Registry(autoload=False, extra_plugins=[_PrimitivePlugin(name, primitive), _DatasetPlugin("ok")])
    (failure,) = registry.failures
    assert failure.name == "_PrimitivePlugin" and said in failure.error
    assert len(caught) == 1 and str(failure) in str(caught[0].message)
    assert name not in registry.catalog("primitives") and "ok" in registry.catalog("datasets")


def test_a_builtin_rule_weighing_an_unknown_primitive_stops_the_registry(monkeypatch):
    import sys
    import types

    from neural_alignment import plugins
    from neural_alignment.core.rules import RuleSpec

    module = types.ModuleType("nalign_test_builtin_typo")
    module.register_rules = hookimpl(lambda register: register("typo", RuleSpec("typo", weights={"sefl": 1.0})))
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setattr(plugins, "BUILTIN_PLUGINS", [*plugins.BUILTIN_PLUGINS, module.__name__])
    with pytest.raises(
        RegistryError,
        match=re.escape(
            "built-in plugin 'nalign_test_builtin_typo': rule 'typo' weighs "
            "unknown primitive 'sefl'. Did you mean 'self'?"
        ),
    ):
        Registry(autoload=False)
