"""How a run stops when it is told to or loses a process: SIGTERM or SIGINT (preemption of TPU
VMs and spot GPUs, Ctrl-C), and a data-parallel process that died.

A preempted machine gets SIGTERM and, after a grace period, SIGKILL. While the trainer's loop
runs inside :class:`StopSignals`, SIGTERM and SIGINT only record that a stop was asked for; the
step in progress finishes, every process of the run agrees to stop after the same step
(``Backend.agree_stop``), the trainer writes a checkpoint at that step and a ``summary.json``
with ``status: interrupted``, and raises :class:`Interrupted`: ``nalign`` prints one line and
exits ``128 + signal`` (143 for SIGTERM, 130 for SIGINT). ``nalign run --resume DIR`` then ends
exactly where an uninterrupted run ends. Outside the loop (building, the final evaluation) the
signals keep their usual effect; SIGKILL cannot be caught and leaves the last periodic
checkpoint (``train.checkpoint_every``).

When a process of a data-parallel run dies (killed, out of memory), the others fail in their
next collective; the trainer turns that error into :class:`ProcessLost`, one line instead of
the collective library's traceback (``nalign``'s own launcher names the process that died).
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

from neural_alignment.core.errors import RunFailure
from neural_alignment.runtime.backend import STOP_SIGNALS

LAUNCHED_BY_NALIGN = "NALIGN_LAUNCHER"  # set by a backend's launch in the processes it starts: it reports a death


class Interrupted(KeyboardInterrupt):
    """The run stopped on a signal after writing its checkpoint; ``exit_code`` = 128 + the signal.

    A ``KeyboardInterrupt``: what runs many trainings (a grid, a search) stops as on Ctrl-C rather
    than recording a failed run and going on. ``report`` is the one line ``nalign`` prints ("" in
    the processes of a data-parallel run other than rank 0, which print nothing).
    """

    def __init__(self, signum: int, report: str):
        super().__init__(report)
        self.signum, self.report, self.exit_code = signum, report, 128 + signum

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name


class StopSignals:
    """Context: SIGTERM and SIGINT set :attr:`received` (the signal's number) instead of ending the
    process; the previous handlers come back on exit. Off the main thread (where Python cannot
    install handlers) it does nothing and the signals act as usual."""

    def __init__(self) -> None:
        self.received = 0
        self._previous: dict[int, object] = {}

    def _record(self, signum: int, frame: FrameType | None) -> None:
        self.received = self.received or signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._record)
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        self._previous.clear()


class ProcessLost(RunFailure):
    """A surviving process of a data-parallel run whose collective failed because another process
    died. ``exit_code`` 3 tells a launcher it survived; the one that died exited otherwise."""

    exit_code = 3
