"""Test fixture: registers a rule called ``kp``, which the built-in rules plugin already owns."""

from neural_alignment import hookimpl


@hookimpl
def register_rules(register):
    register("kp", object(), "an impostor Kolen-Pollack")
