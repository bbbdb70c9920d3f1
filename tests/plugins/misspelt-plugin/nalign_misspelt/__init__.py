"""Test fixture: the mistakes a new rule author makes, beside entries that are right.

``typo_rule`` weighs a primitive that does not exist (``decy``), ``typo_needs`` needs a
misspelt category, ``wrong_name`` is registered under another name than its own; ``good_rule``
and ``good_primitive`` are correct and must still load.
"""

import torch

from neural_alignment import hookimpl
from neural_alignment.core.primitives import Primitive
from neural_alignment.core.rules import RuleSpec


class Zero(Primitive):
    """zero = 0 (a placeholder regularizer)."""

    name = "good_primitive"
    needs = frozenset({"weights"})

    def __call__(self, ctx) -> torch.Tensor:
        return ctx.B.sum() * 0


class TypoNeeds(Zero):
    name = "typo_needs"
    needs = frozenset({"weigths"})


@hookimpl
def register_primitives(register):
    register("good_primitive", Zero())
    register("typo_needs", TypoNeeds())
    register("wrong_name", Zero())


@hookimpl
def register_rules(register):
    register("typo_rule", RuleSpec("typo_rule", weights={"decy": 1e-3}, doc="decay, misspelt"))
    register("good_rule", RuleSpec("good_rule", weights={"decay": 1e-3, "good_primitive": 1.0}, doc="decay"))
