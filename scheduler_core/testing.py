"""Helpers for tests of schedctl and of applications that embed it: a clock moved by hand
and a bounded wait for a scheduler's runs to finish. Nothing in production imports this."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

from scheduler_core.runtime import Scheduler

__all__ = ["FakeClock", "wait_for_completions"]


class FakeClock:
    """A clock tests move by hand; thread-safe."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 1, tzinfo=UTC)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def set(self, value: datetime) -> None:
        with self._lock:
            self._now = value

    def advance(self, seconds: float | timedelta) -> datetime:
        delta = seconds if isinstance(seconds, timedelta) else timedelta(seconds=seconds)
        with self._lock:
            self._now += delta
            return self._now


def wait_for_completions(scheduler: Scheduler, count: int, timeout: float = 10.0) -> None:
    """Block until ``count`` outcomes are waiting to be collected by ``scheduler``'s loop,
    or ``timeout`` seconds have passed (the caller's next ``step()`` writes them)."""
    deadline = time.monotonic() + timeout
    while scheduler.outcomes_waiting < count and time.monotonic() < deadline:
        time.sleep(0.005)
