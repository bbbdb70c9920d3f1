"""The alignment math a rule author reads: aligned ops and layers, primitives, rules, feedback, schedules, metrics."""
