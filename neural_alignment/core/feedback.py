"""Feedback paths: how a rule's layers send the error backward, when not by dy B alone.

The default backward of an aligned layer is the op's ``dx = dy B`` (``core/ops.py``), B a
parameter that a rule keeps fixed (fa) or trains with primitives (wm, kp, ...). A rule that
needs another backward path carries a :class:`Feedback` (``RuleSpec(feedback=...)``); the
layers of that rule call it at three points, and nothing else in the framework knows it:

- ``attach(layer)``: once, when the layer is built (``from_module`` or a constructor), to
  give the layer its own state, e.g. ``layer.register_buffer(...)`` (buffers move with the
  model, persistent ones are checkpointed). Missing from a loaded state dict, they keep this
  state (a layer loads torch's own state dicts).
- ``before_forward(layer)``: before every forward with gradients enabled (inside
  ``torch.no_grad``): set B from W (sign symmetry), note which layer ran last (direct feedback).
- ``input_gradient(layer, dy, input_shape) -> dx | None``: in the op's backward, the gradient
  for the layer's input (``input_shape``: the input as the op sees it, after a conv layer's
  explicit padding) in place of ``dy B``; None keeps ``dy B``. dW and db stay the ordinary
  ``dy^T x`` and ``sum dy``, B's transported update (kp's angle) is unchanged.

The layers of one model run ``before_forward`` in forward order and ``input_gradient`` in
backward order (the last layer's first), so a feedback may carry what one pass learns to the
layers after it in that pass (the output error, for direct feedback alignment). One ``Rule``
object, and so one feedback object, is shared by every layer it builds.

``native_backward()`` turns every feedback off inside it (no ``before_forward``, no
``input_gradient``): ``gradient_angle``'s reference pass is true backprop under it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeGuard

from torch import Tensor

__all__ = ["Feedback", "feedback_active", "native_backward"]


class Feedback:
    """A rule's backward path beyond ``dx = dy B``; every method is optional (this base does nothing)."""

    def attach(self, layer) -> None:
        """Give a newly built ``layer`` its own state (buffers, attributes)."""

    def before_forward(self, layer) -> None:
        """Runs under ``torch.no_grad`` before each forward of ``layer`` with gradients enabled."""

    def input_gradient(self, layer, dy: Tensor, input_shape: tuple[int, ...]) -> Tensor | None:
        """The gradient for the layer's input (shape ``input_shape``) from the output gradient ``dy``,
        or None for the op's own ``dy B``."""
        return None


_native = threading.local()


@contextmanager
def native_backward() -> Iterator[None]:
    """Inside it, every layer ignores its rule's feedback: its backward is the op's ``dy B``."""
    previous = getattr(_native, "on", False)
    _native.on = True
    try:
        yield
    finally:
        _native.on = previous


def feedback_active(feedback: Feedback | None) -> TypeGuard[Feedback]:
    """Whether a layer calls ``feedback`` now: there is one and ``native_backward`` is not on."""
    return feedback is not None and not getattr(_native, "on", False)
