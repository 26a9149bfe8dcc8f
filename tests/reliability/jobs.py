"""Task callables for the in-process reliability tests: they record what really ran."""

from __future__ import annotations

import threading
import time

__all__ = ["EXECUTIONS", "fail_with", "record", "reset"]

#: (label, wall-clock time) of every execution, in this process.
EXECUTIONS: list[tuple[str, float]] = []
_LOCK = threading.Lock()


def record(label: str) -> None:
    """Note that ``label`` ran now (the true wall clock of the test process)."""
    with _LOCK:
        EXECUTIONS.append((label, time.time()))


def fail_with(message: str) -> None:
    """Fail with exactly ``message`` (quotes, newlines, unicode, SQL-looking text...)."""
    raise RuntimeError(message)


def reset() -> None:
    with _LOCK:
        EXECUTIONS.clear()
