"""Retrying a transaction the database aborted to resolve a conflict between writers.

PostgreSQL aborts one side of a deadlock (SQLSTATE 40P01) or of a serialization conflict
(40001); SQLite reports a writer that waited past its busy timeout as "database is locked".
Nothing was written by the aborted transaction, so running it again is safe. The admin
commands (pause, resume, run-now, cancel, emergency-stop) retry such a failure themselves
instead of exiting non-zero; the scheduler's loop retries its own passes already.
"""

from __future__ import annotations

import functools
import logging
import random
import time
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import sqlalchemy as sa

__all__ = ["RETRYABLE_SQLSTATES", "is_conflict", "retry_conflicts"]

log = logging.getLogger(__name__)

#: serialization_failure, deadlock_detected.
RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})

P = ParamSpec("P")
R = TypeVar("R")


def is_conflict(exc: BaseException) -> bool:
    """True for a database error that aborted the transaction only to resolve a conflict."""
    if not isinstance(exc, sa.exc.DBAPIError):
        return False
    sqlstate = getattr(exc.orig, "sqlstate", None)
    if sqlstate in RETRYABLE_SQLSTATES:
        return True
    return isinstance(exc, sa.exc.OperationalError) and "database is locked" in str(exc.orig)


def retry_conflicts(
    attempts: int = 5,
    base_delay: float = 0.05,
    sleep: Callable[[float], None] = time.sleep,
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Run the decorated transaction again (up to ``attempts`` times in all, with jittered
    exponential backoff) when it fails with a conflict; any other error is raised at once."""

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            for attempt in range(1, attempts + 1):
                try:
                    return fn(*args, **kwargs)
                except sa.exc.DBAPIError as exc:
                    if attempt == attempts or not is_conflict(exc):
                        raise
                    delay = base_delay * 2 ** (attempt - 1) * (0.5 + random.random())
                    log.info(
                        "%s: transaction aborted by a conflict (%s), retrying in %.2fs",
                        fn.__name__,
                        type(exc.orig).__name__,
                        delay,
                    )
                    sleep(delay)
            raise AssertionError("unreachable")  # the last attempt returned or raised

        return wrapper

    return decorate
