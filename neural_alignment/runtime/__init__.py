"""The machinery a run stands on: devices and processes (backend), data splits, loggers, checkpoints,
snapshots, optimizers, atomic files."""
