"""How many runs are organised: the executor every grid and search trial trains through, comparison grids,
Ray, ``nalign compare``."""
