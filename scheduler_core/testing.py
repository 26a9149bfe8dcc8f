"""Helpers for tests of schedctl and of applications that embed it: a clock moved by hand, a
scheduler started for a ``with`` block, and bounded waits for its runs to finish. Nothing in
production imports this."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from scheduler_core.clock import Clock
from scheduler_core.runtime import EngineSettings, Scheduler

__all__ = [
    "RECORD_CALLS_ENV",
    "FakeClock",
    "read_recorded_calls",
    "record_call",
    "run_cycle",
    "running_scheduler",
    "wait_for_completions",
]

#: The environment variable naming the file :func:`record_call` appends to.
RECORD_CALLS_ENV = "SCHEDCTL_RECORD_CALLS"


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


def run_cycle(scheduler: Scheduler, timeout: float = 10.0) -> int:
    """Start what is due, wait for those runs to finish, and record them; the runs started."""
    started = scheduler.step()
    wait_for_completions(scheduler, started, timeout=timeout)
    scheduler.step()
    return started


@contextmanager
def running_scheduler(
    engine: sa.Engine,
    clock: Clock | None = None,
    *,
    instance_id: str = "test",
    drain_grace: float = 2.0,
    **settings: Any,
) -> Iterator[Scheduler]:
    """A started scheduler on ``engine`` (no health server), stopped and drained on exit.

    ``settings`` are further :class:`EngineSettings` fields; without ``clock`` the scheduler
    reads the database's.
    """
    scheduler = Scheduler(
        engine=engine,
        settings=EngineSettings(
            instance_id=instance_id, health_listen=None, drain_grace=drain_grace, **settings
        ),
        clock=clock,
    )
    scheduler.start()
    try:
        yield scheduler
    finally:
        scheduler.request_stop()
        scheduler.drain()


def record_call(*args: Any, **kwargs: Any) -> None:
    """A task callable for tests that run schedulers as separate processes: append this call
    (its ``args``, ``kwargs``, the pid and the wall time) as one JSON line to the file named by
    ``$SCHEDCTL_RECORD_CALLS``, in one ``O_APPEND`` write, so concurrent calls of several
    processes never mix. Cheap to import: a test module as the callable's module would be
    imported at the first run and delay it."""
    line = json.dumps({"args": args, "kwargs": kwargs, "pid": os.getpid(), "t": time.time()})
    fd = os.open(os.environ[RECORD_CALLS_ENV], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def read_recorded_calls(path: Path) -> list[dict[str, Any]]:
    """The calls :func:`record_call` wrote to ``path`` (none when it was never called)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]
