"""SIGINT/SIGTERM during ``acktr train``: stop at the next env step, never in the middle of something.

A ``KeyboardInterrupt`` raised asynchronously can land inside a C++ extension (torch, envpool) while it
runs a Python callback, and then ends the process with ``terminate called after throwing an instance of
'pybind11::error_already_set'``; or inside a checkpoint write. Within :func:`deferred_interrupts` the first
SIGINT or SIGTERM only records itself; training polls :func:`requested` after every env step and stops
there, leaving a run that ``acktr train --resume`` continues. A second signal raises ``KeyboardInterrupt``
at once, for a process that does not reach its next step.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_requested: str | None = None
_immediate = False  # after training: signals raise KeyboardInterrupt at once again


def requested() -> str | None:
    """The name of the signal that asked training to stop (``"SIGINT"``/``"SIGTERM"``), or None."""
    return _requested


def _handle(signum: int, frame: FrameType | None) -> None:
    global _requested
    if _requested is not None or _immediate:
        raise KeyboardInterrupt  # a second signal, or nothing left to stop gracefully: stop now
    _requested = signal.Signals(signum).name


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Record SIGINT/SIGTERM instead of raising (main thread only; elsewhere a no-op); restores the previous
    handlers on exit."""
    global _requested, _immediate
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in _SIGNALS}
    _requested, _immediate = None, False
    for signum in _SIGNALS:
        signal.signal(signum, _handle)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _requested, _immediate = None, False


def stop_deferring() -> None:
    """Training is over (its model saved): raise ``KeyboardInterrupt`` now if a signal was recorded, and at
    once for any later one (e.g. during the final evaluation)."""
    global _immediate
    _immediate = True
    if _requested is not None:
        raise KeyboardInterrupt


__all__ = ["deferred_interrupts", "requested", "stop_deferring"]
