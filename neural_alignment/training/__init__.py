"""How one run trains: build it from a recipe, its run folder, the step loop, evaluation and probes, ``nalign run``."""
