"""The callables the benchmarks schedule: a no-op that records when it was called."""

from __future__ import annotations

import threading
import time

__all__ = ["CALLS", "noop", "reset"]

#: (seconds late when called, wall time when it returned) per call, for in-process runs.
CALLS: list[tuple[float, float]] = []
_lock = threading.Lock()


def noop(due: float | None = None) -> None:
    """Do nothing; when ``due`` (Unix time the tick was scheduled for) is given, record lateness."""
    if due is not None:
        called = time.time()
        with _lock:
            CALLS.append((called - due, time.time()))


def reset() -> None:
    with _lock:
        CALLS.clear()
