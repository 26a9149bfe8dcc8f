"""Fixtures for the core: a store on each backend, a fake clock, task definitions."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa

from scheduler_core.config import parse_task_document
from scheduler_core.runtime import EngineSettings, Scheduler
from scheduler_core.store import Store
from scheduler_core.tasks import TaskDefinition
from scheduler_core.testing import FakeClock

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


def tasks(
    *mappings: dict[str, Any], defaults: dict[str, Any] | None = None
) -> list[TaskDefinition]:
    return parse_task_document({"defaults": defaults or {}, "tasks": list(mappings)}, source="test")


def failing_with_one_retry(name: str, *, every: str, delay: str) -> dict[str, Any]:
    """A command task that always fails, retried once after a fixed ``delay``."""
    retries = {"max": 1, "backoff": "fixed", "delay": delay}
    return {"name": name, "command": ["false"], "every": every, "retries": retries}


@pytest.fixture
def store(db_engine: sa.Engine) -> Store:
    return Store(db_engine, instance_id="inst-a")


@pytest.fixture
def make_scheduler(db_engine: sa.Engine, clock: FakeClock) -> Iterator[Callable[..., Scheduler]]:
    """Build schedulers on the test database; all are drained at teardown."""
    made: list[Scheduler] = []

    def make(instance_id: str = "inst-a", **overrides: Any) -> Scheduler:
        settings = EngineSettings(
            instance_id=instance_id, health_listen=None, drain_grace=2, kill_grace=1, **overrides
        )
        scheduler = Scheduler(engine=db_engine, settings=settings, clock=clock)
        scheduler.start()
        made.append(scheduler)
        return scheduler

    yield make
    for scheduler in made:
        scheduler.request_stop()
        scheduler.drain()
