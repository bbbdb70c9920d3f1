"""Direct feedback alignment for neural-alignment (Nokland, 2016), registered through the
public hooks only: the rule ``dfa`` (``feedback.py`` gives the formula)."""

from neural_alignment import hookimpl
from neural_alignment.core.rules import RuleSpec
from neural_alignment_direct_feedback.feedback import DirectFeedback

__version__ = "0.1.0"


def dfa_rule() -> RuleSpec:
    """The ``dfa`` rule: B unused and untrained, every layer's dx = e D_l."""
    return RuleSpec(
        "dfa",
        trains_backward_weight=False,
        feedback=DirectFeedback(),
        doc="Direct feedback alignment: each layer's input gradient is e D_l, e the output error, "
        "D_l fixed random (Nokland 2016).",
    )


@hookimpl
def register_rules(register):
    spec = dfa_rule()
    register(spec.name, spec, spec.doc)
