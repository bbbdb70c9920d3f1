"""Test fixture: prints on import (as a chatty plugin does) and registers rule ``faulty``, whose
primitive ``explode`` raises on its third call (the third training step), as a buggy plugin would."""

from neural_alignment import hookimpl
from neural_alignment.core.primitives import Primitive
from neural_alignment.core.rules import RuleSpec

print("faulty plugin: loading")


class Explode(Primitive):
    """explode = sum B (one layer's sum), until its third call, which raises."""

    name = "explode"
    needs = frozenset({"weights"})
    calls = 0

    def __call__(self, ctx):
        Explode.calls += 1
        if Explode.calls == 3:
            raise ValueError("explode: the plugin's own bug")
        return ctx.B.sum()


@hookimpl
def register_primitives(register):
    print("faulty plugin: registering")
    register("explode", Explode())


@hookimpl
def register_rules(register):
    register("faulty", RuleSpec("faulty", weights={"explode": 1.0}), "Raises in training (a test fixture).")
