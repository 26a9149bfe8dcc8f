"""Best-effort telemetry writes: each in its own short transaction with a statement
timeout; an error is logged (rate-limited) and swallowed, never raised into a run."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import sqlalchemy as sa

from scheduler_core.errors import error_reason
from scheduler_core.telemetry.ratelimit import RateLimitedLogger

__all__ = ["BestEffortWriter"]

T = TypeVar("T")


class BestEffortWriter:
    """Runs telemetry writes so that they can neither fail nor hold up a run."""

    def __init__(
        self, engine: sa.Engine, *, statement_timeout: float, errors: RateLimitedLogger
    ) -> None:
        self.engine = engine
        self.statement_timeout = statement_timeout
        self.errors = errors

    def write(self, what: str, work: Callable[[sa.Connection], T]) -> T | None:
        """Run ``work`` in its own short transaction; on error log (rate-limited), return None."""
        try:
            with self.engine.begin() as conn:
                if conn.dialect.name == "postgresql":
                    ms = int(self.statement_timeout * 1000)
                    conn.exec_driver_sql(f"SET LOCAL statement_timeout = {ms}")
                return work(conn)
        except Exception as exc:  # telemetry must never fail the run
            self.errors.error(
                f"telemetry:{what}",
                f"telemetry write failed ({what}); runs continue unaffected: "
                f"{type(exc).__name__}: {error_reason(exc)}",
            )
            return None
