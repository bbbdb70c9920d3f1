"""The hooks a plugin implements: one per kind of thing it can add.

Every ``register_<kind>`` hook receives a ``register`` callable::

    register(name, obj, description=None)

``description`` defaults to the first line of ``obj.doc`` (a ``RuleSpec``'s description) or,
without one, of ``obj``'s docstring. What ``obj`` is depends
on the kind (see each hook). Built-in plugins use exactly these hooks; there is no other way in.
"""

from __future__ import annotations

import pluggy

PROJECT_NAME = "neural_alignment"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)


@hookspec
def register_ops(register):
    """Register aligned versions of torch module kinds.

    ``obj`` is an :class:`neural_alignment.core.layers.OpSpec`: the torch module class it
    replaces and ``from_module(module, rule)`` building the aligned layer with W copied.
    """


@hookspec
def register_primitives(register):
    """Register layer-wise regularizer primitives.

    ``obj`` is a :class:`neural_alignment.core.primitives.Primitive` instance: a ``name``
    (the registered name), what it ``needs`` (a set of the categories in
    ``core.primitives.NEEDS``) and ``__call__(ctx) -> scalar tensor``.
    """


@hookspec
def register_rules(register):
    """Register learning rules.

    ``obj`` is a :class:`neural_alignment.core.rules.RuleSpec`: its ``name`` (the registered
    name), default primitive weights (each primitive registered by some plugin) and options;
    ``get_rule(name, **overrides)`` builds a rule from it. A rule with its own backward path
    sets ``RuleSpec(feedback=...)`` (``core/feedback.py``: B set from W each step, or a layer's
    input gradient other than dy B); no other hook is involved.
    """


@hookspec
def register_architectures(register):
    """Register network builders: ``obj(num_classes, in_shape, **options) -> nn.Module`` (plain torch layers)."""


@hookspec
def register_datasets(register):
    """Register dataset builders: ``obj(root=None, **options) -> DataSplits`` (``runtime.data``)."""


@hookspec
def register_backends(register):
    """Register execution backends (cpu, cuda, ddp, xla): ``obj`` is a Backend class."""


@hookspec
def register_loggers(register):
    """Register metric loggers: ``obj(run_dir, run_name, config, **options)`` returns a ``runtime.logger.Logger``."""


@hookspec
def register_recipes(register):
    """Register folders of YAML recipes: ``obj`` is a ``pathlib.Path`` to a folder."""


@hookspec
def register_commands(cli):
    """Add subcommands to ``nalign``: ``cli`` is the argparse subparsers object.

    A subcommand sets ``func=callable(args) -> int`` with ``set_defaults``.
    """
