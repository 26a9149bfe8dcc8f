"""Callables for the runtime-task tests: each call is recorded with its arguments."""

from __future__ import annotations

import threading
from typing import Any

__all__ = ["CALLS", "greet", "greet_then_fail", "reset"]

#: (args, kwargs) of every call of :func:`greet`, in this process.
CALLS: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
_LOCK = threading.Lock()


def greet(*args: Any, **kwargs: Any) -> None:
    with _LOCK:
        CALLS.append((args, kwargs))


def greet_then_fail(*args: Any, **kwargs: Any) -> None:
    """Recorded like :func:`greet`, then fails: every attempt of a retried run is seen."""
    greet(*args, **kwargs)
    raise RuntimeError("failed on purpose")


def reset() -> None:
    with _LOCK:
        CALLS.clear()
