"""Moved to ``neural_alignment.runtime.backend``: this old path, which plugins were given, stays importable
(it is that module itself, with a DeprecationWarning)."""

import sys
import warnings

from neural_alignment.runtime import backend

warnings.warn(
    "neural_alignment.core.backend moved to neural_alignment.runtime.backend", DeprecationWarning, stacklevel=2
)
sys.modules[__name__] = backend
