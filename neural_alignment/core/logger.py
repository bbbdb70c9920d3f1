"""Moved to ``neural_alignment.runtime.logger``: this old path, which plugins were given, stays importable
(it is that module itself, with a DeprecationWarning)."""

import sys
import warnings

from neural_alignment.runtime import logger

warnings.warn("neural_alignment.core.logger moved to neural_alignment.runtime.logger", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = logger
