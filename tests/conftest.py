"""Shared test set-up.

Hypothesis explores new examples on every run at a developer's desk; under CI (CI=true) it
runs a fixed, derandomized sweep so a submission's result does not depend on the draw.

In the xla environment (torch-xla importable; `make test` runs the tests marked ``xla`` there),
the XLA device is created when the session starts: torch-xla 2.9 needs it before the first
backward of the process, or every later XLA backward fails (autograd ``device_ready_queues_``).
"""

import importlib.util
import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


def pytest_sessionstart(session):
    if importlib.util.find_spec("torch_xla") is not None:
        import torch_xla

        torch_xla.device()
