"""Clocks: the system clock and the database-clock offset (a settable clock for tests is
``scheduler_core.testing.FakeClock``)."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol

import sqlalchemy as sa

__all__ = ["Clock", "DatabaseClock", "SystemClock"]


class Clock(Protocol):
    """Something that tells the current time as an aware UTC datetime."""

    def now(self) -> datetime: ...


class SystemClock:
    """This host's wall clock."""

    def now(self) -> datetime:
        return datetime.now(UTC)


#: Offset measurements per resync; the one with the shortest round trip is kept.
_SAMPLES = 3


class DatabaseClock:
    """The database server's clock, read without a round trip per call.

    Every ``resync_seconds`` it measures the offset between the database's ``now()`` and the
    local clock (halving the round trip), and otherwise returns local time plus that offset.
    Leases computed from it agree across instances whose own wall clocks disagree. SQLite
    is embedded, so its clock is the host's and the offset is zero.
    """

    def __init__(
        self,
        engine: sa.Engine,
        *,
        local: Clock | None = None,
        resync_seconds: float = 30.0,
    ) -> None:
        self._engine = engine
        self._local = local or SystemClock()
        self._resync = resync_seconds
        self._offset = timedelta(0)
        self._synced_at = float("-inf")
        self._lock = threading.Lock()
        self._is_sqlite = engine.dialect.name == "sqlite"

    @property
    def offset(self) -> timedelta:
        return self._offset

    def resync(self) -> None:
        """Measure the offset now; on failure keep the last one (a read must not fail)."""
        if self._is_sqlite:
            self._synced_at = time.monotonic()
            return
        # Timed on an open connection, best of a few: the error is half the round trip, and
        # a round trip that includes connecting (tens of ms under load) let a tick start
        # that much early by the true clock (tests/reliability/test_clock.py).
        samples = []
        with self._engine.connect() as conn:
            for _ in range(_SAMPLES):
                before = self._local.now()
                db_now = conn.execute(sa.text("SELECT clock_timestamp()")).scalar_one()
                after = self._local.now()
                samples.append(
                    (after - before, db_now.astimezone(UTC) - (before + (after - before) / 2))
                )
        _round_trip, offset = min(samples, key=lambda sample: sample[0])
        with self._lock:
            self._offset = offset
            self._synced_at = time.monotonic()

    def now(self) -> datetime:
        if time.monotonic() - self._synced_at > self._resync:
            try:
                self.resync()
            except sa.exc.SQLAlchemyError:
                self._synced_at = time.monotonic()  # retry at the next interval, not per call
        return self._local.now() + self._offset
