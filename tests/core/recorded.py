"""Callables for the runtime-task tests: each call is recorded with its arguments."""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any

__all__ = [
    "CALLS",
    "CHATTY_RUNS",
    "chatty",
    "fail_with",
    "greet",
    "greet_then_fail",
    "moved",
    "printing",
    "reset",
    "say_then_fail",
]

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


#: Eight runs of :func:`chatty` meet here, so that all of them log while all are in flight.
CHATTY_RUNS = 8
_CHATTY = threading.Barrier(CHATTY_RUNS, timeout=10)


def chatty(tag: str) -> dict[str, Any]:
    """Log ten lines tagged ``tag`` while the other chatty runs log theirs; return a dict."""
    log = logging.getLogger(f"tests.chatty.{tag}")
    _CHATTY.wait()
    for i in range(10):
        log.info("<%s> line %d", tag, i)
        if i == 4:
            _CHATTY.wait()
    return {"tag": tag, "files_moved": 3, "bytes_moved": 1024.5, "note": "not a declared key"}


def moved(files: int) -> dict[str, Any]:
    """A sync's result: how much it moved."""
    return {"files_moved": files, "bytes_moved": files * 100}


_PRINTING = threading.Barrier(CHATTY_RUNS, timeout=10)


def printing(tag: str) -> None:
    """Print ten lines tagged ``tag`` (odd ones to stderr), a log line between them, while
    the other printing runs print theirs."""
    _PRINTING.wait()
    for i in range(10):
        print(f"<{tag}> line {i}", file=sys.stderr if i % 2 else sys.stdout)
        if i == 4:
            logging.getLogger(f"tests.printing.{tag}").warning("<%s> logged", tag)
            _PRINTING.wait()


def say_then_fail(text: str) -> None:
    """Print ``text``, then fail."""
    print(text)
    raise RuntimeError("failed after saying something")


def fail_with(message: str) -> None:
    """Raise a ValueError with ``message``."""
    raise ValueError(message)
