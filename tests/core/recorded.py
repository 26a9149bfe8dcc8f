"""Callables for the runtime-task tests: each call is recorded with its arguments."""

from __future__ import annotations

import threading
from typing import Any

__all__ = ["CALLS", "greet", "reset"]

#: (args, kwargs) of every call of :func:`greet`, in this process.
CALLS: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
_LOCK = threading.Lock()


def greet(*args: Any, **kwargs: Any) -> None:
    with _LOCK:
        CALLS.append((args, kwargs))


def reset() -> None:
    with _LOCK:
        CALLS.clear()
