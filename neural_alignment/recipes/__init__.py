"""What a recipe is: its typed schema, the loader (names, ``base:`` chains, ``by_rule``, overrides) and the
built-in YAML."""
