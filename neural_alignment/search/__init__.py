"""Metaparameter searches: the space, trials and their records, the local and Ray drivers, ``nalign search``."""
