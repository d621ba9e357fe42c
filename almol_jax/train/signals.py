"""SIGTERM handling (TPU preemption, `scancel`): ask the loop to save a checkpoint and exit 0.

`StopRequest` is a small object the loop polls after each step; `install_sigterm(stop)` makes
SIGTERM set it (main thread only) and returns a function that restores the previous handler.
In a multi-host job every process receives the signal; `stop.agreed()` takes the maximum over
processes so that all of them stop at the same step (a save is a collective operation).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable

import jax
import numpy as np


class StopRequest:
    """A flag set by a signal handler (or a test hook), read by the training loop."""

    def __init__(self):
        self._event = threading.Event()
        self.reason: str | None = None

    def set(self, reason: str) -> None:
        self.reason = reason
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def agreed(self) -> bool:
        """Whether any process has been asked to stop (the same answer on every process)."""
        local = self.is_set()
        if jax.process_count() == 1:
            return local
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.asarray([int(local)], np.int32))
        return bool(np.max(flags))


def install_sigterm(stop: StopRequest) -> Callable[[], None]:
    """SIGTERM sets `stop`; returns the function restoring the previous handler (no-op off the
    main thread, where signal handlers cannot be installed)."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.getsignal(signal.SIGTERM)

    def handler(signum, frame):
        stop.set(f"signal {signal.Signals(signum).name}")

    signal.signal(signal.SIGTERM, handler)
    return lambda: signal.signal(signal.SIGTERM, previous)
