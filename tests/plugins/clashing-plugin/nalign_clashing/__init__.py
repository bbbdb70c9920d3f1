"""Test fixture: registers a rule called ``kp``, which the built-in rules plugin already owns."""

from neural_alignment import hookimpl
from neural_alignment.core.rules import RuleSpec


@hookimpl
def register_rules(register):
    register("kp", RuleSpec("kp"), "an impostor Kolen-Pollack")
