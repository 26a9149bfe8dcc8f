"""The callables the benchmarks schedule: a no-op that records when it was called, and two
that say 1 KB a run, one through ``logging`` and one through ``print``."""

from __future__ import annotations

import logging
import threading
import time

__all__ = ["CALLS", "noop", "print_1kb", "reset", "say_1kb"]

#: (seconds late when called, wall time when it returned) per call, for in-process runs.
CALLS: list[tuple[float, float]] = []
_lock = threading.Lock()


def noop(due: float | None = None) -> None:
    """Do nothing; when ``due`` (Unix time the tick was scheduled for) is given, record lateness."""
    if due is not None:
        called = time.time()
        with _lock:
            CALLS.append((called - due, time.time()))


_SAY = logging.getLogger("bench.say")
_LINE = "x" * 120


def say_1kb() -> None:
    """Log 8 lines of ~128 bytes at INFO (1 KB of output a run, as the output benchmark
    asks): captured as the run's output; an unconfigured process prints nothing of it."""
    for i in range(8):
        _SAY.info("%d %s", i, _LINE)


_PRINTED = "x" * 125  # "0 xxx...x\n": 128 bytes a line


def print_1kb() -> None:
    """Print 8 lines of 128 bytes (1 KB of output a run): captured as the run's output,
    never reaching the scheduler's own stdout."""
    for i in range(8):
        print(f"{i} {_PRINTED}")


def reset() -> None:
    with _lock:
        CALLS.clear()
