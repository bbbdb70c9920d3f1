"""Moved to ``neural_alignment.runtime.data``: this old path, which plugins were given, stays importable
(it is that module itself, with a DeprecationWarning)."""

import sys
import warnings

from neural_alignment.runtime import data

warnings.warn("neural_alignment.core.data moved to neural_alignment.runtime.data", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = data
