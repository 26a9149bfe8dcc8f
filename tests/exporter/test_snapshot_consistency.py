"""One scrape is one moment: the snapshot's five SELECTs read one database snapshot, even when
another connection commits between them (PostgreSQL: a REPEATABLE READ, read-only transaction,
also with ``pool_mode=transaction`` and through a real PgBouncer in transaction pooling;
SQLite: one deferred WAL BEGIN)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from exporter.database import create_reader_engine
from scheduler_core import models
from scheduler_core.db import create_db_engine
from scheduler_core.store.snapshot import TaskSnapshot, read_snapshot
from tests.exporter.factories import (
    FULL_ALERTS,
    NOW,
    StatementCounter,
    health_row,
    insert,
    running_run_row,
    schedule_row,
)
from tests.pgbouncer.conftest import bouncer_db, bouncer_url, pg_bouncer  # noqa: F401 (fixtures)


def _seed(engine: sa.Engine) -> None:
    """A task with one run in flight, after a failure, and no success since before today's
    deadline (its alerts block sets every field): the deadline is missed until it succeeds."""
    insert(
        engine,
        models.schedules,
        [
            schedule_row(
                "job", runs_success_total=3, runs_failure_total=1, consecutive_failures=1,
                alert_policy=FULL_ALERTS.to_json(),
            )
        ],
    )  # fmt: skip
    insert(
        engine,
        models.task_health,
        [
            health_row(
                "job",
                "node-a:1",
                is_running=True,
                last_started_at=NOW - timedelta(seconds=30),
                last_finished_at=NOW - timedelta(minutes=6),
                last_status="failure",
                last_duration_seconds=5.0,
            )
        ],
    )
    insert(
        engine,
        models.task_runs,
        [
            running_run_row(
                "job",
                scheduled_for=NOW - timedelta(seconds=31),
                started_at=NOW - timedelta(seconds=30),
            )
        ],
    )


def _finish_the_run(writer: sa.Engine) -> None:
    """What the scheduler commits when the run succeeds: run row, health row, counters."""
    with writer.begin() as conn:
        conn.execute(
            models.task_runs.update()
            .where(models.task_runs.c.task_name == "job")
            .values(status="success", finished_at=NOW, duration_seconds=30.0)
        )
        conn.execute(
            models.task_health.update()
            .where(models.task_health.c.task_name == "job")
            .values(is_running=False, last_finished_at=NOW, last_status="success")
        )
        conn.execute(
            models.schedules.update()
            .where(models.schedules.c.name == "job")
            .values(
                runs_success_total=models.schedules.c.runs_success_total + 1,
                consecutive_failures=0,
                last_success_at=NOW,
            )
        )


def _state(task: TaskSnapshot) -> tuple[Any, ...]:
    return (
        task.running,
        task.runs_total["success"],
        task.consecutive_failures,
        task.last_status,
        task.last_finished_at,
        task.badge,
        task.deadline_missed,
    )


BEFORE = (1, 3, 1, "failure", NOW - timedelta(minutes=6), "running", True)
AFTER = (0, 4, 0, "success", NOW, "ok", False)


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgresql", marks=pytest.mark.postgres),
        pytest.param("postgresql-transaction-pooling", marks=pytest.mark.postgres),
        pytest.param("pgbouncer", marks=pytest.mark.postgres),
    ]
)
def url(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "sqlite":
        yield str(request.getfixturevalue("sqlite_url"))
        return
    if request.param == "pgbouncer":  # a real PgBouncer, pool_mode = transaction
        yield str(request.getfixturevalue("bouncer_url"))
        return
    base = str(request.getfixturevalue("pg_url"))
    if request.param == "postgresql":
        yield base
    else:
        yield base + ("&" if "?" in base else "?") + "pool_mode=transaction"


def test_a_commit_between_the_statements_is_not_half_seen(url: str) -> None:
    """Another connection finishes the run and bumps its counters right after the reader's
    first SELECT: the snapshot is all before that commit, not running=0 with the old status."""
    writer = create_db_engine(url)
    reader = create_reader_engine(url)
    try:
        _seed(writer)
        seen: dict[str, Any] = {}

        def after_execute(statement: str, cursor: Any) -> None:
            if "scheduler_task_health" not in statement or "committed" in seen:
                return
            if reader.dialect.name == "postgresql":
                raw = cursor.connection
                seen["isolation"] = raw.execute("SHOW transaction_isolation").fetchone()[0]
                seen["read_only"] = raw.execute("SHOW transaction_read_only").fetchone()[0]
            _finish_the_run(writer)
            seen["committed"] = True

        with StatementCounter(reader, after=after_execute):
            [task] = read_snapshot(reader, NOW).tasks
        assert seen.get("committed"), "the hook did not run after the health SELECT"
        assert _state(task) == BEFORE
        if url.startswith("postgresql"):
            assert (seen["isolation"], seen["read_only"]) == ("repeatable read", "on")
        # The next read sees the commit, whole.
        [task] = read_snapshot(reader, NOW).tasks
        assert _state(task) == AFTER
    finally:
        reader.dispose()
        writer.dispose()


@pytest.mark.postgres
def test_the_isolation_does_not_outlive_the_read(pg_url: str) -> None:
    """The pooled connection the snapshot used reads at the session's default level again."""
    writer = create_db_engine(pg_url)
    reader = create_reader_engine(pg_url)
    try:
        _seed(writer)
        read_snapshot(reader, NOW)
        with reader.connect() as conn:
            level = conn.exec_driver_sql("SHOW transaction_isolation").scalar()
        assert level == "read committed"
    finally:
        reader.dispose()
        writer.dispose()
